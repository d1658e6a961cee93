//! `engine-compat`: deprecated aliases for the legacy engine names (filled in by the
//! engine-compat issue). Holds no implementation.
