//! Everything a request needs, built once at start.

use crate::audit::Auditor;
use crate::config::Config;
use crate::error::Result;
use crate::fhir::capability::capability_statement;
use crate::fhir::validate::Structure;
use crate::policy::Policy;
use crate::policy::auth::Authenticator;
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use serde_json::Value;
use std::sync::Arc;

pub struct App {
    pub config: Config,
    pub structure: Structure,
    pub store: Arc<dyn Store>,
    pub policy: Policy,
    pub auth: Authenticator,
    pub auditor: Auditor,
    pub capability: Value,
}

/// The store the config names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(if config.store == "sqlite" {
        Arc::new(SqliteStore::open(&config.data_dir).await?)
    } else {
        Arc::new(PostgresStore::open(&config.store, &config.postgres).await?)
    })
}

impl App {
    pub async fn build(config: Config) -> Result<App> {
        let structure = Structure::load(config.limits.max_validation_errors as usize)?;
        let store = open_store(&config).await?;
        let capability = capability_statement(&config, &structure);
        let auth = Authenticator::new(&config.auth)?;
        let auditor = Auditor::start(store.clone());
        let policy = Policy::new(store.clone(), &config)?;
        Ok(App {
            config,
            structure,
            store,
            policy,
            auth,
            auditor,
            capability,
        })
    }
}
