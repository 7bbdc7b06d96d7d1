#include "guard.hpp"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>

namespace popularity::pg {

namespace {

CapturedError captured; // one error in flight per process at most: it is raised right away

void copy_text(char *dest, const char *src) noexcept {
    if (src == nullptr) {
        dest[0] = '\0';
        return;
    }
    snprintf(dest, CapturedError::text_size, "%s", src);
}

int sqlstate_of(core::ErrorCode code) noexcept {
    switch (code) {
    case core::ErrorCode::invalid_parameter:
        return ERRCODE_INVALID_PARAMETER_VALUE;
    case core::ErrorCode::numeric_out_of_range:
        return ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE;
    case core::ErrorCode::invalid_text:
        return ERRCODE_INVALID_TEXT_REPRESENTATION;
    case core::ErrorCode::data_corrupted:
        return ERRCODE_DATA_CORRUPTED;
    case core::ErrorCode::internal:
        break;
    }
    return ERRCODE_INTERNAL_ERROR;
}

} // namespace

const char *PgError::what() const noexcept {
    return (data_ != nullptr && data_->message != nullptr) ? data_->message : "PostgreSQL error";
}

std::string strprintf(const char *format, ...) {
    va_list args;
    va_start(args, format);
    va_list again;
    va_copy(again, args);
    const int length = vsnprintf(nullptr, 0, format, args);
    va_end(args);
    std::string out(length > 0 ? static_cast<std::size_t>(length) : 0, '\0');
    if (length > 0) {
        vsnprintf(out.data(), out.size() + 1, format, again);
    }
    va_end(again);
    return out;
}

void capture_current_exception(const char *function_name) noexcept {
    CapturedError &c = captured;
    c.pg_error = nullptr;
    c.sqlstate = ERRCODE_INTERNAL_ERROR;
    c.message[0] = c.detail[0] = c.hint[0] = '\0';
    char *message = c.message;
    char *detail = c.detail;
    char *hint = c.hint;
    constexpr std::size_t text_size = CapturedError::text_size;
    try {
        throw;
    } catch (const PgError &e) {
        c.pg_error = e.data();
    } catch (const SqlError &e) {
        c.sqlstate = e.sqlstate();
        copy_text(message, e.what());
        copy_text(detail, e.detail().c_str());
        copy_text(hint, e.hint().c_str());
    } catch (const core::Error &e) {
        c.sqlstate = sqlstate_of(e.code());
        copy_text(message, e.what());
        copy_text(detail, e.detail().c_str());
        copy_text(hint, e.hint().c_str());
    } catch (const std::bad_alloc &) {
        c.sqlstate = ERRCODE_OUT_OF_MEMORY;
        snprintf(message, text_size, "out of memory in %s", function_name);
    } catch (const std::exception &e) {
        c.sqlstate = ERRCODE_INTERNAL_ERROR;
        snprintf(message, text_size, "unexpected C++ exception in %s: %s", function_name, e.what());
        copy_text(hint, "This is a bug in the popularity extension; please report it.");
    } catch (...) {
        c.sqlstate = ERRCODE_INTERNAL_ERROR;
        snprintf(message, text_size, "unexpected C++ exception of unknown type in %s",
                 function_name);
        copy_text(hint, "This is a bug in the popularity extension; please report it.");
    }
}

void raise_captured_error() {
    const CapturedError &c = captured;
    if (c.pg_error != nullptr) {
        ReThrowError(c.pg_error);
    }
    ereport(ERROR, (errcode(c.sqlstate), errmsg_internal("%s", c.message),
                    c.detail[0] != '\0' ? errdetail_internal("%s", c.detail) : 0,
                    c.hint[0] != '\0' ? errhint("%s", c.hint) : 0));
    pg_unreachable();
}

} // namespace popularity::pg
