"""What a ClickHouse error says: storage away or overloaded (try again later), or a refusal."""

from __future__ import annotations

import re

from clickhouse_connect.driver.exceptions import OperationalError

RETRY_CODES = frozenset(
    {
        *(3, 74, 75, 76, 173, 198, 202, 203, 209, 210, 225, 236, 242, 243, 252, 279, 285, 319, 394, 425),
        *(439, 516, 999, 1000, 1001, 1002),
    }
)
"""ClickHouse error codes of storage being unreachable, overloaded or broken (NETWORK_ERROR,
TOO_MANY_PARTS, TABLE_IS_READ_ONLY, NOT_ENOUGH_SPACE, UNKNOWN_STATUS_OF_INSERT, ...): the same
statement may succeed later."""

TIMEOUT_CODES = frozenset({159, 160})
"""TIMEOUT_EXCEEDED, TOO_SLOW: a statement took too long."""

_CODE = re.compile(r"Code: (\d+)")


def error_code(error: BaseException) -> int:
    """The ClickHouse error code an error names (the innermost, last one), 0 when it names none."""
    codes = _CODE.findall(str(error))
    return int(codes[-1]) if codes else 0


def transient(error: BaseException) -> bool:
    """Whether a failed insert may succeed unchanged later: ClickHouse could not be reached or
    answered in time, or named a code of being away, overloaded or broken. Anything else that
    names a code (a parse error, a failed check, a missing table, a memory limit) is a refusal."""
    if isinstance(error, OperationalError):
        return True
    code = error_code(error)
    return code in RETRY_CODES or code in TIMEOUT_CODES
