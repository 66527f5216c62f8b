//! The SQL adapter (`kind = "sql"`): a care institution's own client-record database
//! (MariaDB/MySQL or PostgreSQL), read-only, onto FHIR through the declarative mapping of its
//! config section. Reads and searches only: the institution's system stays the place its records
//! are written.
//!
//! Each mapping is resolved against the database the first time it is used (the columns its
//! table or query has, and their kinds, from a prepare); a mapping that names a column the
//! database lacks fails that resource type with a logged reason, not the gateway.

pub mod config;
pub mod mapping;
pub mod source;
#[cfg(test)]
mod tests;

use crate::{
    Adapter, AdapterError, Capabilities, ConfigError, Failure, Health, Interaction, Organization,
    ResourceCapability, SearchPage, namespace,
};
use config::Config;
use mapping::Table;
use serde_json::Value;
use source::Source;
use tokio::sync::OnceCell;

pub struct SqlAdapter {
    config: Config,
    source: Source,
    capabilities: Capabilities,
    /// Per mapping, resolved on first use.
    tables: Vec<OnceCell<Table>>,
    meta_source: String,
}

impl SqlAdapter {
    pub fn from_config(section: &Value) -> Result<SqlAdapter, ConfigError> {
        let config: Config = serde_json::from_value(section.clone()).map_err(|e| ConfigError {
            name: section["name"].as_str().map(str::to_owned),
            message: e.to_string(),
        })?;
        let mut types: Vec<&str> = config
            .mappings
            .iter()
            .map(|m| m.resource.as_str())
            .collect();
        types.sort();
        if types.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError {
                name: Some(config.name.clone()),
                message: "two mappings for one resource type".into(),
            });
        }
        let source = Source::new(&config)?;
        let capabilities = Capabilities {
            resources: config
                .mappings
                .iter()
                .map(|m| ResourceCapability {
                    resource_type: m.resource.clone(),
                    interactions: vec![Interaction::Read, Interaction::Search],
                    // The parameters follow from the fields alone (no database needed).
                    search_params: Table {
                        mapping: m.clone(),
                        columns: Vec::new(),
                        kinds: Default::default(),
                    }
                    .search_params(),
                })
                .collect(),
        };
        Ok(SqlAdapter {
            tables: config.mappings.iter().map(|_| OnceCell::new()).collect(),
            meta_source: format!("urn:healthhub-utrecht:sql:{}", config.name),
            config,
            source,
            capabilities,
        })
    }

    fn error(&self, kind: Failure, detail: impl Into<String>) -> AdapterError {
        AdapterError::new(&self.config.name, kind, detail)
    }

    /// The resolved mapping of `resource_type`, if the config maps it.
    async fn table(&self, resource_type: &str) -> Result<Option<&Table>, AdapterError> {
        let Some(i) = self
            .config
            .mappings
            .iter()
            .position(|m| m.resource == resource_type)
        else {
            return Ok(None);
        };
        let mapping = &self.config.mappings[i];
        let table = self.tables[i]
            .get_or_try_init(|| async {
                let probe = format!(
                    "SELECT * FROM {}",
                    Table {
                        mapping: mapping.clone(),
                        columns: Vec::new(),
                        kinds: Default::default(),
                    }
                    .from(self.source.dialect())
                );
                let described = self.source.columns(&probe).await?;
                Table::resolve(mapping.clone(), &described)
                    .map_err(|e| self.error(Failure::Protocol, e))
            })
            .await?;
        Ok(Some(table))
    }
}

#[async_trait::async_trait]
impl Adapter for SqlAdapter {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn organization(&self) -> &Organization {
        &self.config.organization
    }

    fn source(&self) -> &str {
        &self.meta_source
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn health(&self) -> Health {
        match self.source.ping().await {
            Ok(()) => Health::Up,
            Err(e) => Health::Down(e.detail),
        }
    }

    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Value>, AdapterError> {
        let Some(backend_id) = namespace::inward(&self.config.name, id) else {
            return Ok(None);
        };
        let Some(table) = self.table(resource_type).await? else {
            return Ok(None);
        };
        let Some((sql, binds)) = table.read_sql(self.source.dialect(), backend_id) else {
            return Ok(None);
        };
        let rows = self.source.rows(&sql, &binds).await?;
        Ok(self
            .resources(table, &rows, &mut Vec::new())
            .into_iter()
            .next())
    }

    async fn search(
        &self,
        resource_type: &str,
        params: &[(String, String)],
        page: Option<&str>,
    ) -> Result<SearchPage, AdapterError> {
        let Some(table) = self.table(resource_type).await? else {
            return Err(self.error(
                Failure::Unsupported,
                format!("{resource_type} is not mapped"),
            ));
        };
        let limit = params
            .iter()
            .find(|(k, _)| k == "_count")
            .and_then(|(_, v)| v.parse::<u32>().ok())
            .unwrap_or(self.config.max_page)
            .min(self.config.max_page);
        let planned = table
            .search_sql(
                self.source.dialect(),
                &self.config.name,
                params,
                page,
                limit,
            )
            .map_err(|u| self.error(Failure::Unsupported, format!("cannot evaluate {}", u.0)))?;
        let Some(sql) = planned else {
            return Ok(SearchPage {
                total: Some(0),
                ..SearchPage::default()
            });
        };
        if limit == 0 {
            let total = self.count(&sql).await?;
            return Ok(SearchPage {
                total: Some(total),
                ..SearchPage::default()
            });
        }
        let (mut rows, total) = if page.is_none() {
            let (rows, total) =
                tokio::try_join!(self.source.rows(&sql.rows, &sql.binds), self.count(&sql))?;
            (rows, Some(total))
        } else {
            (self.source.rows(&sql.rows, &sql.binds).await?, None)
        };
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().and_then(|r| r.first().cloned().flatten())
        } else {
            None
        };
        let mut warnings = Vec::new();
        let matches = self.resources(table, &rows, &mut warnings);
        Ok(SearchPage {
            matches,
            included: Vec::new(),
            total,
            next,
            warnings,
        })
    }
}

impl SqlAdapter {
    fn resources(
        &self,
        table: &Table,
        rows: &[Vec<Option<String>>],
        warnings: &mut Vec<String>,
    ) -> Vec<Value> {
        let rows: Vec<&[Option<String>]> = rows.iter().map(Vec::as_slice).collect();
        mapping::resources(
            table,
            &rows,
            (
                &self.config.name,
                &self.meta_source,
                &self.config.organization,
            ),
            warnings,
        )
    }

    async fn count(&self, sql: &mapping::SearchSql) -> Result<u64, AdapterError> {
        let rows = self.source.rows(&sql.count, &sql.count_binds).await?;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| self.error(Failure::Protocol, "COUNT(*) gave no number"))
    }
}
