//! The run-time half of "engines come only from the factory": the process has one engine
//! construction key. Its own test binary (its own process), because taking the key is final.

use engine_core::AgentRegistry;
use engine_factory::{ExecutionEngineFactory, FactoryConfig, FactoryError};

#[test]
fn a_bypass_that_takes_the_key_first_leaves_no_factory_and_is_named() {
    // A bypass: code outside engine-factory takes the key before any factory exists.
    #[expect(deprecated, reason = "this test plays the bypass")]
    let stolen = engine_core::factory_only::take_factory_key();
    assert!(stolen.is_ok(), "the first taker gets the key");

    // Nobody else gets it, whoever asks.
    #[expect(deprecated, reason = "this test plays a second bypass")]
    let again = engine_core::factory_only::take_factory_key().unwrap_err();
    assert!(again.taken_at.file().ends_with("key_taken.rs"), "{again}");

    // No factory can be created, and the error says where the key went and what to do.
    let err = ExecutionEngineFactory::new(
        FactoryConfig::default(),
        AgentRegistry::builder().build().unwrap(),
    )
    .unwrap_err();
    let FactoryError::KeyTaken(taken) = &err else {
        panic!("expected KeyTaken, got {err:?}");
    };
    assert_eq!(taken.taken_at.line(), line_of_first_take());
    let message = err.to_string();
    assert!(message.contains("key_taken.rs:"), "{message}");
    assert!(message.contains("ExecutionEngineFactory"), "{message}");
    assert!(message.contains("remove the code"), "{message}");
}

/// The line of `take_factory_key()` in the first statement of the test above.
fn line_of_first_take() -> u32 {
    let source = include_str!("key_taken.rs");
    let line = source
        .lines()
        .position(|l| l.contains("let stolen = engine_core::factory_only::take_factory_key();"))
        .expect("the bypass line");
    u32::try_from(line + 1).unwrap()
}
