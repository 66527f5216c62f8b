//! Bulk data `$export` jobs (FHIR Bulk Data Access IG 2.0): a kick-off starts a job in the
//! background with the kicking-off principal's rights; the job pages through the store, passes
//! every page through the policy's disclosure (scopes, consent) exactly as a search would, writes
//! what was released as NDJSON, one set of files per type, and audits each page like a search
//! page. Memory stays flat whatever the size: one page is held at a time, files are written as
//! they go and split at `export.max_resources_per_file`, and the only set that grows is the keys
//! of the few resources in more than one exported patient's compartment (written once).
//!
//! Jobs live in this process (a restart forgets them; `serve` removes their directories at start).

use crate::app::App;
use crate::audit::Access;
use crate::error::{Error, Result};
use crate::fhir::named_operations::ExportLevel;
use crate::fhir::operation::{ALL_TYPES, Read, Search};
use crate::policy::scopes::Permission;
use crate::policy::{Asked, Disclosed, Principal};
use crate::store::Stored;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

/// The export jobs of this gateway.
pub struct Exports {
    dir: PathBuf,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

/// Who may poll, download and cancel a job: the issuer and subject that kicked it off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub issuer: String,
    pub subject: String,
}

impl Owner {
    pub fn of(principal: &Principal) -> Option<Owner> {
        match principal {
            Principal::Token(t) => Some(Owner {
                issuer: t.issuer.clone(),
                subject: t.subject.clone(),
            }),
            Principal::Anonymous => None,
        }
    }
}

pub struct Job {
    pub id: String,
    pub owner: Owner,
    /// The kick-off URL (the manifest's `request`).
    pub request: String,
    /// When the export began: the manifest's `transactionTime` (a later `_since` starts here).
    pub transaction_time: OffsetDateTime,
    pub dir: PathBuf,
    cancelled: AtomicBool,
    exported: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Clone)]
pub enum State {
    Running,
    Complete {
        output: Vec<Output>,
        finished: std::time::Instant,
    },
    Failed(String),
}

/// One output file.
#[derive(Debug, Clone)]
pub struct Output {
    pub ty: String,
    pub file: String,
    pub count: u64,
}

/// What a job exports, decided at kick-off.
#[derive(Debug, Clone)]
pub struct Plan {
    pub level: ExportLevel,
    /// The types to export (already narrowed to what the principal may search).
    pub types: Vec<String>,
    pub since: Option<OffsetDateTime>,
}

impl Exports {
    /// Jobs under `data_dir/exports`.
    pub fn new(data_dir: &std::path::Path) -> Exports {
        Exports {
            dir: data_dir.join("exports"),
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// Removes what an earlier server process left (its jobs died with it). Only `serve` calls
    /// this: `gateway import` builds an app on the same data directory while a server may run.
    pub fn clear_leftovers(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new job, unless `max_running` jobs run already (429). Finished jobs older than
    /// `retention` are removed first.
    pub fn start(
        &self,
        owner: Owner,
        request: String,
        max_running: usize,
        retention: std::time::Duration,
    ) -> Result<Arc<Job>> {
        let mut jobs = self.jobs();
        let expired: Vec<String> = jobs
            .values()
            .filter(|j| {
                matches!(j.state(), State::Complete { finished, .. } if finished.elapsed() > retention)
            })
            .map(|j| j.id.clone())
            .collect();
        for id in expired {
            if let Some(j) = jobs.remove(&id) {
                let _ = std::fs::remove_dir_all(&j.dir);
            }
        }
        let running = jobs
            .values()
            .filter(|j| matches!(j.state(), State::Running))
            .count();
        if running >= max_running {
            return Err(Error::client(
                http::StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format!("{running} exports are running; try again later"),
            ));
        }
        let id = crate::store::new_id().replace('-', "");
        let job = Arc::new(Job {
            dir: self.dir.join(&id),
            id: id.clone(),
            owner,
            request,
            transaction_time: crate::store::now_ms(),
            cancelled: AtomicBool::new(false),
            exported: AtomicU64::new(0),
            state: Mutex::new(State::Running),
        });
        jobs.insert(id, job.clone());
        Ok(job)
    }

    /// The job, if `owner` started it (another principal's job is "not found").
    pub fn get(&self, id: &str, owner: &Owner) -> Result<Arc<Job>> {
        self.jobs()
            .get(id)
            .filter(|j| &j.owner == owner)
            .cloned()
            .ok_or_else(|| Error::not_found("no such export job"))
    }

    /// Cancels a running job or deletes a finished one's files.
    pub fn cancel(&self, id: &str, owner: &Owner) -> Result<()> {
        let job = self.get(id, owner)?;
        job.cancelled.store(true, Ordering::SeqCst);
        self.jobs().remove(id);
        let _ = std::fs::remove_dir_all(&job.dir);
        Ok(())
    }
}

impl Job {
    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, s: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Resources written so far.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The path of one of its files, if the job wrote it.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        match self.state() {
            State::Complete { output, .. } if output.iter().any(|o| o.file == name) => {
                Some(self.dir.join(name))
            }
            _ => None,
        }
    }
}

/// Runs a job to its end (or its cancellation) and records the outcome.
pub async fn run(app: Arc<App>, job: Arc<Job>, principal: Principal, asked: Asked, plan: Plan) {
    let mut run = Run {
        app: &app,
        job: &job,
        principal: &principal,
        asked: &asked,
        plan: &plan,
        files: Files::new(job.dir.clone(), app.config.export.max_resources_per_file),
        shared: HashSet::new(),
    };
    let result = run.all().await;
    let files = run.files;
    let result = match result {
        Ok(()) => files.finish().await,
        Err(e) => Err(e),
    };
    if job.cancelled() {
        let _ = tokio::fs::remove_dir_all(&job.dir).await;
        return;
    }
    match result {
        Ok(output) => job.set(State::Complete {
            output,
            finished: std::time::Instant::now(),
        }),
        Err(e) => {
            tracing::error!(job = %job.id, error = %e.log_detail(), "export failed");
            let _ = tokio::fs::remove_dir_all(&job.dir).await;
            job.set(State::Failed(
                e.issues
                    .first()
                    .map(|i| i.diagnostics.clone())
                    .unwrap_or_else(|| "the export failed".into()),
            ));
        }
    }
}

struct Run<'a> {
    app: &'a App,
    job: &'a Job,
    principal: &'a Principal,
    asked: &'a Asked,
    plan: &'a Plan,
    files: Files,
    /// Resources in more than one patient's compartment already written (a patient-level export
    /// meets them once per patient).
    shared: HashSet<(String, String)>,
}

impl Run<'_> {
    async fn all(&mut self) -> Result<()> {
        tokio::fs::create_dir_all(&self.job.dir)
            .await
            .map_err(|e| Error::internal(format!("export directory: {e}")))?;
        match self.plan.level.clone() {
            ExportLevel::System => {
                for ty in self.plan.types.clone() {
                    self.search(ty, None).await?;
                }
            }
            ExportLevel::Patient => {
                let mut cursor = None;
                loop {
                    let op = Search {
                        ty: "Patient".into(),
                        count: self.app.config.export.page_size,
                        cursor: cursor.take(),
                        criteria: crate::fhir::search::Criteria {
                            compartment: self
                                .app
                                .policy
                                .search_compartment(self.principal, "Patient"),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    let permit = self.app.policy.authorize(self.principal, op)?;
                    let page = self.app.store.search(&permit).await?;
                    let ids: Vec<String> = page.entries.iter().map(|s| s.id.clone()).collect();
                    for id in ids {
                        self.patient(&id).await?;
                    }
                    match page.next {
                        Some(n) => cursor = Some(n),
                        None => break,
                    }
                }
            }
            ExportLevel::Group(id) => {
                for p in self.members(&id).await? {
                    self.patient(&p).await?;
                }
            }
        }
        Ok(())
    }

    /// The patients a Group lists (read and disclosed like any read of it).
    async fn members(&self, group: &str) -> Result<Vec<String>> {
        let permit = self.app.policy.authorize(
            self.principal,
            Read {
                ty: "Group".into(),
                id: group.to_owned(),
            },
        )?;
        let stored = self
            .app
            .store
            .read(&permit)
            .await?
            .filter(|s| !s.is_deleted())
            .ok_or_else(|| Error::not_found(format!("Group/{group} is not known")))?;
        let d = self
            .app
            .policy
            .disclose(self.principal, self.asked, stored, Permission::Read)
            .await?;
        let group = d.get().json()?;
        let mut out: Vec<String> = Vec::new();
        for m in group["member"].as_array().into_iter().flatten() {
            if m["inactive"] == true {
                continue;
            }
            if let Some(id) = m["entity"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/"))
                && !out.iter().any(|x| x == id)
            {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    /// One patient's compartment, over the planned types.
    async fn patient(&mut self, id: &str) -> Result<()> {
        let types: Vec<String> = self
            .plan
            .types
            .iter()
            .filter(|t| crate::fhir::compartment::has_compartment(t))
            .cloned()
            .collect();
        if types.is_empty() {
            return Ok(());
        }
        // One search over every type when the token may search every type, else one per type.
        let all = Search {
            ty: ALL_TYPES.into(),
            ..Default::default()
        };
        if self.app.policy.authorize(self.principal, all).is_ok() {
            self.search(ALL_TYPES.into(), Some((id, &types))).await
        } else {
            for ty in types {
                self.search(ty, Some((id, &[]))).await?;
            }
            Ok(())
        }
    }

    /// Pages through a search of `ty` (within a patient's compartment, of some types), writing
    /// what is disclosed.
    async fn search(&mut self, ty: String, within: Option<(&str, &[String])>) -> Result<()> {
        let mut criteria = match self.plan.since {
            Some(since) => {
                crate::fhir::search::parse_criteria(
                    &ty,
                    &[(
                        "_lastUpdated".to_owned(),
                        format!("gt{}", crate::store::format_instant(since)),
                    )],
                    &self.app.structure,
                )?
                .0
            }
            None => Default::default(),
        };
        criteria.compartment = self.app.policy.search_compartment(self.principal, &ty);
        if let Some((patient, types)) = within {
            criteria.within = Some(patient.to_owned());
            criteria.types = types.to_vec();
        }
        let mut cursor = None;
        loop {
            if self.job.cancelled() {
                return Ok(());
            }
            let op = Search {
                ty: ty.clone(),
                criteria: criteria.clone(),
                count: self.app.config.export.page_size,
                cursor: cursor.take(),
                ..Default::default()
            };
            // A type the token may not search is not exported (explicit `_type`s were checked
            // at kick-off).
            let Ok(permit) = self.app.policy.authorize(self.principal, op) else {
                return Ok(());
            };
            let page = self.app.store.search(&permit).await?;
            let released = self
                .app
                .policy
                .disclose_each(self.principal, self.asked, page.entries, Permission::Search)
                .await?
                .entries;
            self.write(released).await?;
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(()),
            }
        }
    }

    /// Writes a disclosed page and audits it like a search page.
    async fn write(&mut self, page: Vec<Disclosed<Stored>>) -> Result<()> {
        let mut entities = Vec::with_capacity(page.len());
        let mut patients: Vec<String> = Vec::new();
        let mut written = 0u64;
        for d in &page {
            let s = d.get();
            if d.patients().len() > 1 && !self.shared.insert((s.ty.clone(), s.id.clone())) {
                continue;
            }
            let Some(body) = &s.body else { continue };
            self.files.write(&s.ty, body).await?;
            written += 1;
            entities.push(format!("{}/{}/_history/{}", s.ty, s.id, s.version));
            for p in d.patients() {
                let p = format!("Patient/{p}");
                if !patients.contains(&p) {
                    patients.push(p);
                }
            }
        }
        if written == 0 {
            return Ok(());
        }
        let access = Access {
            interaction: "export".into(),
            action: "E",
            status: 200,
            entities,
            patients,
            query: Some(self.job.request.clone()),
            peer: format!("bulk export job {}", self.job.id),
            ..Default::default()
        };
        // No page leaves without its audit record: a failed audit fails the export.
        self.app.auditor.record(self.principal, &access).await?;
        self.job.exported.fetch_add(written, Ordering::Relaxed);
        Ok(())
    }
}

/// The NDJSON files of a job: per type, split every `max` resources.
struct Files {
    dir: PathBuf,
    max: u64,
    open: HashMap<String, Open>,
    done: Vec<Output>,
    /// How many files each type has had.
    numbers: HashMap<String, u32>,
}

struct Open {
    out: tokio::io::BufWriter<tokio::fs::File>,
    file: String,
    count: u64,
}

fn io(e: std::io::Error) -> Error {
    Error::internal(format!("export file: {e}"))
}

impl Files {
    fn new(dir: PathBuf, max: u64) -> Files {
        Files {
            dir,
            max: max.max(1),
            open: HashMap::new(),
            done: Vec::new(),
            numbers: HashMap::new(),
        }
    }

    async fn write(&mut self, ty: &str, body: &[u8]) -> Result<()> {
        if !self.open.contains_key(ty) {
            let n = self.numbers.entry(ty.to_owned()).or_insert(0);
            *n += 1;
            let file = format!("{ty}-{n}.ndjson");
            let f = tokio::fs::File::create(self.dir.join(&file))
                .await
                .map_err(io)?;
            self.open.insert(
                ty.to_owned(),
                Open {
                    out: tokio::io::BufWriter::with_capacity(256 * 1024, f),
                    file,
                    count: 0,
                },
            );
        }
        let o = self.open.get_mut(ty).expect("opened above");
        // Stored bodies are compact JSON: one line each.
        if body.contains(&b'\n') {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(Error::internal)?;
            o.out
                .write_all(&serde_json::to_vec(&v).map_err(Error::internal)?)
                .await
                .map_err(io)?;
        } else {
            o.out.write_all(body).await.map_err(io)?;
        }
        o.out.write_all(b"\n").await.map_err(io)?;
        o.count += 1;
        if o.count >= self.max
            && let Some(full) = self.open.remove(ty)
        {
            self.close(ty, full).await?;
        }
        Ok(())
    }

    async fn close(&mut self, ty: &str, mut o: Open) -> Result<()> {
        o.out.flush().await.map_err(io)?;
        o.out.get_mut().sync_all().await.map_err(io)?;
        self.done.push(Output {
            ty: ty.to_owned(),
            file: o.file,
            count: o.count,
        });
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<Output>> {
        let open: Vec<(String, Open)> = self.open.drain().collect();
        for (ty, o) in open {
            self.close(&ty, o).await?;
        }
        // Stable: a type's files stay in the order they were written (`-1`, `-2`, ... `-10`).
        self.done.sort_by(|a, b| a.ty.cmp(&b.ty));
        Ok(self.done)
    }
}
