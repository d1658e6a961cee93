//! Proofs that every alias is the canonical type and that every alias is deprecated.
//!
//! `assert_type_eq_all!` fails to compile if an alias points anywhere else; each
//! `#[expect(deprecated)]` fails to compile (unfulfilled expectations are denied) if an alias
//! stops warning, for example if it became a silent `pub use`.
#![deny(unfulfilled_lint_expectations)]

use static_assertions::assert_type_eq_all;

#[expect(deprecated)]
mod executionengine_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::ExecutionEngine,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod supervisorexecutionengine_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::SupervisorExecutionEngine,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod consolidatedexecutionengine_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::ConsolidatedExecutionEngine,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod requestscopedexecutionengine_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::RequestScopedExecutionEngine,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod executionenginewithwebsocketevents_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::ExecutionEngineWithWebSocketEvents,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod mcpenhancedexecutionengine_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::MCPEnhancedExecutionEngine,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod supervisorexecutionengineadapter_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::SupervisorExecutionEngineAdapter,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod consolidatedexecutionenginewrapper_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::ConsolidatedExecutionEngineWrapper,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod genericexecutionengineadapter_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::GenericExecutionEngineAdapter,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod executionengineadapter_is_userexecutionengine {
    use super::*;
    assert_type_eq_all!(
        engine_compat::ExecutionEngineAdapter,
        engine_core::UserExecutionEngine
    );
}

#[expect(deprecated)]
mod unifiedexecutionenginefactory_is_executionenginefactory {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UnifiedExecutionEngineFactory,
        engine_factory::ExecutionEngineFactory
    );
}

#[expect(deprecated)]
mod userexecutionenginefactory_is_executionenginefactory {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UserExecutionEngineFactory,
        engine_factory::ExecutionEngineFactory
    );
}

#[expect(deprecated)]
mod userscopedenginefactory_is_executionenginefactory {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UserScopedEngineFactory,
        engine_factory::ExecutionEngineFactory
    );
}

#[expect(deprecated)]
mod toolexecutionengine_is_tooldispatcher {
    use super::*;
    assert_type_eq_all!(
        engine_compat::ToolExecutionEngine,
        engine_core::ToolDispatcher
    );
}

#[expect(deprecated)]
mod unifiedtoolexecutionengine_is_tooldispatcher {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UnifiedToolExecutionEngine,
        engine_core::ToolDispatcher
    );
}

#[expect(deprecated)]
mod unifiedtooldispatcher_is_tooldispatcher {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UnifiedToolDispatcher,
        engine_core::ToolDispatcher
    );
}

#[expect(deprecated)]
mod requestscopedtooldispatcher_is_tooldispatcher {
    use super::*;
    assert_type_eq_all!(
        engine_compat::RequestScopedToolDispatcher,
        engine_core::ToolDispatcher
    );
}

#[expect(deprecated)]
mod userexecutionengineerror_is_engineerror {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UserExecutionEngineError,
        engine_core::EngineError
    );
}

#[expect(deprecated)]
mod executionenginefactoryerror_is_factoryerror {
    use super::*;
    assert_type_eq_all!(
        engine_compat::ExecutionEngineFactoryError,
        engine_factory::FactoryError
    );
}

#[expect(deprecated)]
mod userexecutioncontextfactory_is_userexecutioncontextbuilder {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UserExecutionContextFactory,
        engine_core::UserExecutionContextBuilder
    );
}

#[expect(deprecated)]
mod usercontextfactory_is_userexecutioncontextbuilder {
    use super::*;
    assert_type_eq_all!(
        engine_compat::UserContextFactory,
        engine_core::UserExecutionContextBuilder
    );
}

#[expect(deprecated)]
mod engineconfig_is_engineconfig {
    use super::*;
    assert_type_eq_all!(engine_compat::EngineConfig, engine_core::EngineConfig);
}

/// Every alias, used once in a type position under an expectation of the deprecation lint.
#[test]
fn every_alias_warns_at_use() {
    #[expect(deprecated)]
    let _: Option<engine_compat::ExecutionEngine> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::SupervisorExecutionEngine> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::ConsolidatedExecutionEngine> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::RequestScopedExecutionEngine> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::ExecutionEngineWithWebSocketEvents> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::MCPEnhancedExecutionEngine> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::SupervisorExecutionEngineAdapter> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::ConsolidatedExecutionEngineWrapper> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::GenericExecutionEngineAdapter> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::ExecutionEngineAdapter> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UnifiedExecutionEngineFactory> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UserExecutionEngineFactory> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UserScopedEngineFactory> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::ToolExecutionEngine> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UnifiedToolExecutionEngine> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UnifiedToolDispatcher> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::RequestScopedToolDispatcher> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UserExecutionEngineError> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::ExecutionEngineFactoryError> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UserExecutionContextFactory> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::UserContextFactory> = None;

    #[expect(deprecated)]
    let _: Option<engine_compat::EngineConfig> = None;
}

/// The names this file proves, for the purity test to compare with the source.
pub const PROVEN: &[&str] = &[
    "ExecutionEngine",
    "SupervisorExecutionEngine",
    "ConsolidatedExecutionEngine",
    "RequestScopedExecutionEngine",
    "ExecutionEngineWithWebSocketEvents",
    "MCPEnhancedExecutionEngine",
    "SupervisorExecutionEngineAdapter",
    "ConsolidatedExecutionEngineWrapper",
    "GenericExecutionEngineAdapter",
    "ExecutionEngineAdapter",
    "UnifiedExecutionEngineFactory",
    "UserExecutionEngineFactory",
    "UserScopedEngineFactory",
    "ToolExecutionEngine",
    "UnifiedToolExecutionEngine",
    "UnifiedToolDispatcher",
    "RequestScopedToolDispatcher",
    "UserExecutionEngineError",
    "ExecutionEngineFactoryError",
    "UserExecutionContextFactory",
    "UserContextFactory",
    "EngineConfig",
];

/// Searching `cargo doc` for a legacy name lands on its replacement: every alias's canonical
/// type carries the legacy name in a `#[doc(alias(...))]` (unless the names are equal).
#[test]
fn every_legacy_name_is_a_doc_alias_of_its_replacement() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = String::new();
    for dir in ["engine-core/src", "engine-factory/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    sources.push_str(&std::fs::read_to_string(&path).unwrap());
                }
            }
        }
    }
    let table = xtask::legacy::aliases();
    assert_eq!(table.len(), 22);
    for (legacy, canonical) in &table {
        let name = canonical.name();
        if legacy == name {
            continue;
        }
        let decl = ["pub struct ", "pub enum "]
            .iter()
            .find_map(|kw| sources.find(&format!("{kw}{name} ")))
            .or_else(|| sources.find(&format!("pub struct {name}<")))
            .unwrap_or_else(|| panic!("declaration of {name} not found"));
        // The attributes right above the declaration.
        let above = &sources[..decl];
        let attrs = &above[above.rfind("\n\n").unwrap_or(0)..];
        let start = attrs
            .find("#[doc(alias(")
            .unwrap_or_else(|| panic!("{name} has no #[doc(alias(...))]"));
        let alias = &attrs[start..start + attrs[start..].find("))]").unwrap()];
        assert!(
            alias.contains(&format!("\"{legacy}\"")),
            "{name}'s doc aliases lack {legacy}: {alias}"
        );
    }
}
