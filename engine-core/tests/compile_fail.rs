//! The compile-time half of "engines come only from the factory": building or stopping an engine
//! through `engine_core::factory_only` outside engine-factory fails under `-D deprecated`, with
//! a note that names `ExecutionEngineFactory`. Expected diagnostics: `tests/ui/*.stderr`
//! (`TRYBUILD=overwrite` rewrites them after a deliberate change).

#[test]
fn building_an_engine_outside_the_factory_fails_to_compile() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
