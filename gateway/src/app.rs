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
    /// Bulk data export jobs.
    pub exports: crate::export::Exports,
    /// Backends behind adapters, reached only with a permit (see `federation`).
    pub federation: crate::federation::Federation,
    /// Rebuilt when custom SearchParameters are installed.
    capability: std::sync::RwLock<Value>,
    /// This app itself, once it is shared (`App::share`): background jobs hold it.
    me: std::sync::OnceLock<std::sync::Weak<App>>,
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
    /// The app behind an `Arc`, known to itself so that background jobs (exports) can hold it.
    pub fn share(self) -> Arc<App> {
        let app = Arc::new(self);
        let _ = app.me.set(Arc::downgrade(&app));
        app
    }

    /// The shared app, when it was shared with [`App::share`].
    pub fn shared(&self) -> Option<Arc<App>> {
        self.me.get().and_then(std::sync::Weak::upgrade)
    }

    /// The CapabilityStatement as it stands.
    pub fn capability(&self) -> Value {
        self.capability.read().expect("capability lock").clone()
    }

    /// Rebuilds the CapabilityStatement (its search parameters changed).
    pub fn refresh_capability(&self) {
        *self.capability.write().expect("capability lock") =
            capability_statement(&self.config, &self.structure);
    }

    pub async fn build(config: Config) -> Result<App> {
        let structure = Structure::load(config.limits.max_validation_errors as usize)?;
        let federation = crate::federation::Federation::build(&config)?;
        let store = open_store(&config).await?;
        let capability = capability_statement(&config, &structure);
        let auth = Authenticator::new(&config.auth)?;
        let auditor = Auditor::start(store.clone());
        let mut policy = Policy::new(store.clone(), &config)?;
        if !federation.is_empty() {
            policy = policy.with_directory(federation.directory());
        }
        let config_dir = config.data_dir.clone();
        let app = App {
            config,
            structure,
            store,
            policy,
            auth,
            auditor,
            exports: crate::export::Exports::new(&config_dir),
            federation,
            capability: std::sync::RwLock::new(capability),
            me: std::sync::OnceLock::new(),
        };
        // Custom SearchParameters stored earlier are in force again (resources written since
        // they were installed are indexed by them; older ones after a reindex).
        match crate::rest::install_search_parameters(&app).await {
            Ok(installed) if !installed.is_empty() => {
                tracing::info!(parameters = ?installed, "custom search parameters installed")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(
                error = %e.log_detail(),
                "the stored SearchParameters cannot be installed; only the spec's are in force"
            ),
        }
        Ok(app)
    }
}
