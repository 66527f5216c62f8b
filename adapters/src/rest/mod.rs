//! The municipal REST/JSON adapter (`kind = "rest"`): a municipality's case-management API
//! (clients, Wmo and Jeugdwet allocations) onto Patient and social-domain ServiceRequests, read
//! and searched through the gateway like any backend, with the SQL adapter's mapping language
//! (see [`mapping`]). Read-only.

pub mod config;
pub mod mapping;
pub mod source;
#[cfg(test)]
mod tests;

use crate::sql::mapping::Table;
use crate::{
    Adapter, AdapterError, Capabilities, ConfigError, Failure, Health, Interaction, Organization,
    ResourceCapability, SearchPage, namespace,
};
use config::Config;
use serde_json::Value;
use source::Source;

pub struct RestAdapter {
    config: Config,
    source: Source,
    tables: Vec<Table>,
    capabilities: Capabilities,
    meta_source: String,
}

impl RestAdapter {
    pub fn from_config(section: &Value) -> Result<RestAdapter, ConfigError> {
        let name = section["name"].as_str().map(str::to_owned);
        let error = |m: String| ConfigError {
            name: name.clone(),
            message: m,
        };
        let config: Config =
            serde_json::from_value(section.clone()).map_err(|e| error(e.to_string()))?;
        let mut tables = Vec::new();
        for m in &config.mappings {
            if m.path.is_none() {
                return Err(error(format!("the {} mapping needs a path", m.resource)));
            }
            if tables
                .iter()
                .any(|t: &Table| t.mapping.resource == m.resource)
            {
                return Err(error("two mappings for one resource type".into()));
            }
            tables.push(mapping::table(m).map_err(error)?);
        }
        let capabilities = Capabilities {
            resources: config
                .mappings
                .iter()
                .map(|m| ResourceCapability {
                    resource_type: m.resource.clone(),
                    interactions: vec![Interaction::Read, Interaction::Search],
                    search_params: m.filters.keys().cloned().collect(),
                })
                .collect(),
        };
        Ok(RestAdapter {
            source: Source::new(&config)?,
            meta_source: config.base_url.clone(),
            config,
            tables,
            capabilities,
        })
    }

    fn table(&self, ty: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.mapping.resource == ty)
    }

    fn resources(&self, table: &Table, items: &[Value], warnings: &mut Vec<String>) -> Vec<Value> {
        let rows: Vec<Vec<Option<String>>> = items
            .iter()
            .map(|i| mapping::row_values(table, i))
            .collect();
        let rows: Vec<&[Option<String>]> = rows.iter().map(Vec::as_slice).collect();
        crate::sql::mapping::resources(
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
}

#[async_trait::async_trait]
impl Adapter for RestAdapter {
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
        let (Some(table), Some(backend_id)) = (
            self.table(resource_type),
            namespace::inward(&self.config.name, id),
        ) else {
            return Ok(None);
        };
        let path = table.mapping.path.clone().unwrap_or_default();
        let encoded: String = form_urlencoded::byte_serialize(backend_id.as_bytes()).collect();
        let Some(item) = self
            .source
            .get(&self.source.url(&format!("{path}/{encoded}"), &[]))
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .resources(table, std::slice::from_ref(&item), &mut Vec::new())
            .pop())
    }

    async fn search(
        &self,
        resource_type: &str,
        params: &[(String, String)],
        page: Option<&str>,
    ) -> Result<SearchPage, AdapterError> {
        let Some(table) = self.table(resource_type) else {
            return Err(AdapterError::new(
                &self.config.name,
                Failure::Unsupported,
                format!("{resource_type} is not mapped"),
            ));
        };
        let url = match page {
            Some(next) => next.to_owned(),
            None => match mapping::query(&table.mapping, &self.config.name, params) {
                Ok(Some(q)) => self
                    .source
                    .url(table.mapping.path.as_deref().unwrap_or_default(), &q),
                Ok(None) => {
                    return Ok(SearchPage {
                        total: Some(0),
                        ..SearchPage::default()
                    });
                }
                Err(p) => {
                    return Err(AdapterError::new(
                        &self.config.name,
                        Failure::Unsupported,
                        format!("cannot evaluate {p}"),
                    ));
                }
            },
        };
        let answer = self.source.get(&url).await?.unwrap_or(Value::Null);
        let items = if table.mapping.items.is_empty() {
            &answer
        } else {
            &answer[table.mapping.items.as_str()]
        };
        let Some(items) = items.as_array() else {
            return Err(AdapterError::new(
                &self.config.name,
                Failure::Protocol,
                "the list answer holds no array of items",
            ));
        };
        let mut warnings = Vec::new();
        let matches = self.resources(table, items, &mut warnings);
        let next = answer[table.mapping.next.as_str()].as_str().map(|n| {
            // A relative link is under the base.
            if n.starts_with('/') {
                self.source.url(n, &[])
            } else {
                n.to_owned()
            }
        });
        Ok(SearchPage {
            matches,
            included: Vec::new(),
            total: None,
            next,
            warnings,
        })
    }
}
