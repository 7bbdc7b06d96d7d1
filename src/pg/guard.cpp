#include "guard.hpp"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>

namespace popularity::pg {

namespace {

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

void CapturedError::capture_current_exception(const char *function_name) noexcept {
    try {
        throw;
    } catch (const PgError &e) {
        pg_error = e.data();
    } catch (const SqlError &e) {
        sqlstate = e.sqlstate();
        copy_text(message, e.what());
        copy_text(detail, e.detail().c_str());
        copy_text(hint, e.hint().c_str());
    } catch (const core::Error &e) {
        sqlstate = sqlstate_of(e.code());
        copy_text(message, e.what());
        copy_text(detail, e.detail().c_str());
        copy_text(hint, e.hint().c_str());
    } catch (const std::bad_alloc &) {
        sqlstate = ERRCODE_OUT_OF_MEMORY;
        snprintf(message, text_size, "out of memory in %s", function_name);
    } catch (const std::exception &e) {
        sqlstate = ERRCODE_INTERNAL_ERROR;
        snprintf(message, text_size, "unexpected C++ exception in %s: %s", function_name, e.what());
        copy_text(hint, "This is a bug in the popularity extension; please report it.");
    } catch (...) {
        sqlstate = ERRCODE_INTERNAL_ERROR;
        snprintf(message, text_size, "unexpected C++ exception of unknown type in %s",
                 function_name);
        copy_text(hint, "This is a bug in the popularity extension; please report it.");
    }
}

void CapturedError::raise() const {
    if (pg_error != nullptr) {
        ReThrowError(pg_error);
    }
    ereport(ERROR, (errcode(sqlstate), errmsg_internal("%s", message),
                    detail[0] != '\0' ? errdetail_internal("%s", detail) : 0,
                    hint[0] != '\0' ? errhint("%s", hint) : 0));
    pg_unreachable();
}

} // namespace popularity::pg
