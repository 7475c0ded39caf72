"""hypothesis strategies for OTLP values, shared by the property tests of the ingest paths and of
the OTLP → storage → query API round trip."""

from __future__ import annotations

from hypothesis import strategies as st

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
"""Any text OTLP can carry (no lone surrogates: protobuf strings are UTF-8)."""
scalars = st.one_of(
    text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=12),
)
"""Every scalar kind of an OTLP AnyValue: string, int64, double (NaN and infinities too), bool, bytes."""
