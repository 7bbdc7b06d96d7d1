// The boundary between C++ exceptions and PostgreSQL's longjmp-based errors.
//
// Rules (README, "The C++ / PostgreSQL error boundary"):
//  * Every SQL-callable function, trigger, hook and worker entry is declared with
//    POPULARITY_FUNCTION (or runs its body through invoke_guarded): the C++ body runs inside a try
//    block; any exception is copied into plain storage, the try scope closes (every destructor
//    runs), and only then is ereport(ERROR) raised.
//  * C++ code that calls a PostgreSQL function that can ereport(ERROR) while C++ objects with
//    destructors are alive does it through pg_call(), which catches the longjmp with PG_TRY, copies
//    the error and rethrows it as PgError. The guard re-raises it with its original SQLSTATE,
//    message, detail, hint and context.
//  * PgError must not be swallowed: after a PostgreSQL error the transaction must be aborted, so
//    code may catch it only to clean up and rethrow.
#pragma once

#include "../core/error.hpp"

#include "pg_includes.hpp"

#include <exception>
#include <string>
#include <type_traits>
#include <utility>

namespace popularity::pg {

// A PostgreSQL error caught by pg_call(), carried through C++ frames as an exception.
class PgError : public std::exception {
  public:
    explicit PgError(ErrorData *data) noexcept : data_(data) {}
    const char *what() const noexcept override;
    ErrorData *data() const noexcept { return data_; }

  private:
    ErrorData *data_; // allocated in the memory context that was current at pg_call()
};

// An error raised by the PostgreSQL layer itself, with a precise SQLSTATE. Its texts are built
// with std::string (see strprintf), never with palloc, so building one cannot longjmp.
class SqlError : public std::exception {
  public:
    SqlError(int sqlstate, std::string message, std::string detail = {}, std::string hint = {})
        : sqlstate_(sqlstate), message_(std::move(message)), detail_(std::move(detail)),
          hint_(std::move(hint)) {}
    const char *what() const noexcept override { return message_.c_str(); }
    int sqlstate() const noexcept { return sqlstate_; }
    const std::string &detail() const noexcept { return detail_; }
    const std::string &hint() const noexcept { return hint_; }

  private:
    int sqlstate_;
    std::string message_;
    std::string detail_;
    std::string hint_;
};

// printf-style formatting into a std::string, without PostgreSQL.
std::string strprintf(const char *format, ...) __attribute__((format(printf, 1, 2)));

// The content of a caught exception, kept in plain process-wide storage (static, trivially
// destructible): filled inside a catch block without calling PostgreSQL, raised as ereport(ERROR)
// after the try scope has closed. Nothing is reserved on the stack of a call that succeeds, which
// matters for functions called once per row.
struct CapturedError {
    static constexpr std::size_t text_size = 1024;
    ErrorData *pg_error; // set for PgError: re-raised unchanged
    int sqlstate;
    char message[text_size];
    char detail[text_size];
    char hint[text_size];
};
static_assert(std::is_trivially_destructible_v<CapturedError>);

// Copies the exception being handled into the process-wide CapturedError. Call only from a catch
// block.
void capture_current_exception(const char *entry_name) noexcept;
// Raises the captured error as a PostgreSQL ERROR.
[[noreturn]] void raise_captured_error();

// Runs body(fcinfo) under the guard. Anything thrown becomes a PostgreSQL ERROR.
template <typename Body>
inline Datum invoke_guarded(const char *function_name, FunctionCallInfo fcinfo, Body body) {
    try {
        return body(fcinfo);
    } catch (...) {
        capture_current_exception(function_name);
    }
    raise_captured_error();
}

// Runs a body with no SQL-level result (a background worker's main, a hook) under the guard.
template <typename Body> inline void run_guarded(const char *entry_name, Body body) {
    try {
        body();
        return;
    } catch (...) {
        capture_current_exception(entry_name);
    }
    raise_captured_error();
}

// Calls a PostgreSQL function that may ereport(ERROR) from a frame holding C++ objects: the
// error is caught with PG_TRY, copied, and rethrown as PgError. `fn` must be a thin call (no C++
// objects with destructors inside it): a longjmp out of it skips only its own frame.
template <typename Fn> auto pg_call(Fn &&fn) -> std::invoke_result_t<Fn> {
    using Result = std::invoke_result_t<Fn>;
    MemoryContext caller_context = CurrentMemoryContext;
    ErrorData *volatile caught = nullptr;
    if constexpr (std::is_void_v<Result>) {
        PG_TRY();
        { fn(); }
        PG_CATCH();
        {
            MemoryContextSwitchTo(caller_context);
            caught = CopyErrorData();
            FlushErrorState();
        }
        PG_END_TRY();
        if (caught != nullptr) {
            throw PgError(caught);
        }
    } else {
        static_assert(std::is_scalar_v<Result>,
                      "pg_call returns plain values only (Datum, pointers, numbers)");
        volatile Result result{}; // volatile: assigned between setjmp and a possible longjmp
        PG_TRY();
        { result = fn(); }
        PG_CATCH();
        {
            MemoryContextSwitchTo(caller_context);
            caught = CopyErrorData();
            FlushErrorState();
        }
        PG_END_TRY();
        if (caught != nullptr) {
            throw PgError(caught);
        }
        return result;
    }
}

} // namespace popularity::pg

// Declares an SQL-callable function `name` whose body is C++ and runs under the guard:
//
//   POPULARITY_FUNCTION(my_function) { ... return Float8GetDatum(x); }
//
// The body is a static function taking `fcinfo` (so PG_GETARG_* and PG_RETURN_* work).
#define POPULARITY_FUNCTION(name)                                                                  \
    static Datum name##_body(FunctionCallInfo fcinfo);                                             \
    extern "C" {                                                                                   \
    PG_FUNCTION_INFO_V1(name);                                                                     \
    Datum name(PG_FUNCTION_ARGS) {                                                                 \
        return ::popularity::pg::invoke_guarded(#name, fcinfo, name##_body);                       \
    }                                                                                              \
    }                                                                                              \
    static Datum name##_body(FunctionCallInfo fcinfo)
