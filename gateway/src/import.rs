//! `gateway import FILE|DIR`: bulk loading of NDJSON (one resource a line, as Bulk Data and
//! Synthea write it) and of transaction or batch Bundles (`.json`).
//!
//! Everything goes through the same path as a client's transaction (`rest::execute`): parsed,
//! validated, permitted for the operator's principal, written in one store transaction per chunk,
//! and audited. NDJSON lines become `PUT [type]/[id]` entries (ids kept, so references between
//! files hold), `chunk` lines a transaction; files are read and parsed on a thread of their own a
//! few chunks ahead, and two chunks are in flight so that one is prepared (validated, indexed)
//! while the other is written.
//!
//! Resumable: after each chunk commits, the line ranges done per file are written to
//! `DATA/import-state.json` (replaced atomically); a second run skips those lines. A failed chunk,
//! or a file or line that cannot be read, stops the import there; what was committed before stays
//! (and is skipped by the next run), and the chunk in flight beside it is still waited for and
//! recorded.

use crate::app::App;
use crate::error::{Error, Result};
use crate::policy::Principal;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What an import did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub resources: u64,
    /// Lines a previous run had imported already.
    pub skipped: u64,
    /// Lines that are not FHIR resources (a bulk export's `log.ndjson`).
    pub ignored: u64,
    pub seconds: f64,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.resources as f64 / self.seconds.max(1e-9)
    }
}

/// The files an argument names: a file, or a directory's `.ndjson` and `.json` files in name
/// order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::invalid(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "ndjson" || x == "json"))
                .collect();
            // Resources that others point at first: Synthea and Bulk Data files reference
            // organisations, locations and practitioners conditionally (`Organization?identifier=`),
            // which must exist when the referencing chunk is written.
            found.sort_by_key(|f| (rank(f), f.clone()));
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::invalid(format!(
                "{}: no such file or directory",
                p.display()
            )));
        }
    }
    Ok(out)
}

/// Where a file goes in a directory's order, by the type its name starts with.
fn rank(f: &Path) -> usize {
    const FIRST: &[&str] = &[
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
        "Patient",
        "Device",
        "Medication",
        "Encounter",
    ];
    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ty = name.split('.').next().unwrap_or("");
    FIRST.iter().position(|t| *t == ty).unwrap_or(FIRST.len())
}

/// Per file, the line ranges `[from, to)` already imported (a Bundle file is the one line 0).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    done: BTreeMap<String, Vec<(u64, u64)>>,
}

impl State {
    fn is_done(&self, file: &str, line: u64) -> bool {
        self.done
            .get(file)
            .is_some_and(|r| r.iter().any(|(a, b)| (*a..*b).contains(&line)))
    }

    /// Adds a range, merging it with those it touches.
    fn add(&mut self, file: &str, from: u64, to: u64) {
        let ranges = self.done.entry(file.to_owned()).or_default();
        ranges.push((from, to));
        ranges.sort();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *ranges = merged;
    }

    fn load(path: &Path) -> State {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(Error::internal)?;
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::internal(format!("{}: {e}", path.display())))
    }
}

fn key(file: &Path) -> String {
    std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_owned())
        .display()
        .to_string()
}

/// One request's worth of work: a Bundle, and how far into its file it gets.
struct Chunk {
    file: String,
    /// Progress units (lines; 1 for a Bundle file).
    units: u64,
    /// The lines of the file this chunk covers, `[from, upto)`.
    from: u64,
    upto: u64,
    /// None when there is nothing left to write (every line imported before, or a Bundle file
    /// done before).
    bundle: Option<Value>,
    resources: u64,
    /// Lines a previous run had imported.
    skipped: u64,
    /// Lines that are not FHIR resources.
    ignored: u64,
}

/// Reads the files into chunks, on a thread of its own: parsing runs beside the writes, a few
/// chunks ahead, and memory stays bounded whatever the files' size.
struct Reader {
    files: Vec<PathBuf>,
    chunk: usize,
    /// What earlier runs imported.
    done: State,
    resource_types: std::collections::BTreeSet<String>,
    progress: indicatif::ProgressBar,
}

impl Reader {
    /// Sends the chunks in file order; stops at the first unreadable file or line, or when the
    /// importer stops listening.
    fn run(self, out: &tokio::sync::mpsc::Sender<Result<Chunk>>) {
        for f in &self.files {
            if let Err(e) = self.file(f, out) {
                let _ = out.blocking_send(Err(e));
                return;
            }
        }
    }

    fn file(&self, f: &Path, out: &tokio::sync::mpsc::Sender<Result<Chunk>>) -> Result<()> {
        let k = key(f);
        let text = std::fs::read_to_string(f)
            .map_err(|e| Error::invalid(format!("{}: {e}", f.display())))?;
        let send = |c: Chunk| out.blocking_send(Ok(c)).is_ok();
        if f.extension().is_some_and(|x| x == "json") {
            self.progress.inc_length(1);
            let done = self.done.is_done(&k, 0);
            let bundle = if done {
                None
            } else {
                Some(
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| Error::invalid(format!("{}: {e}", f.display())))?,
                )
            };
            let n = bundle
                .as_ref()
                .and_then(|b| b["entry"].as_array())
                .map_or(0, |e| e.len()) as u64;
            send(Chunk {
                file: k,
                units: u64::from(!done),
                from: 0,
                upto: 1,
                bundle,
                resources: n,
                skipped: u64::from(done),
                ignored: 0,
            });
            return Ok(());
        }
        let lines: Vec<&str> = text.lines().collect();
        self.progress.inc_length(lines.len() as u64);
        let mut at = 0;
        while at < lines.len() {
            let end = (at + self.chunk).min(lines.len());
            let mut entries = Vec::with_capacity(end - at);
            let (mut skipped, mut ignored) = (0, 0);
            for (n, line) in lines[at..end].iter().enumerate() {
                if self.done.is_done(&k, (at + n) as u64) {
                    skipped += 1;
                    continue;
                }
                if line.trim().is_empty() {
                    continue;
                }
                let r: Value = serde_json::from_str(line).map_err(|e| {
                    Error::invalid(format!("{} line {}: {e}", f.display(), at + n + 1))
                })?;
                let ty = r["resourceType"]
                    .as_str()
                    .filter(|t| self.resource_types.contains(*t));
                let (method, url) = match (ty, r["id"].as_str()) {
                    (Some(ty), Some(id)) => ("PUT", format!("{ty}/{id}")),
                    (Some(ty), None) => ("POST", ty.to_owned()),
                    _ => {
                        ignored += 1;
                        continue;
                    }
                };
                entries.push(json!({"resource": r, "request": {"method": method, "url": url}}));
            }
            let resources = entries.len() as u64;
            let sent = send(Chunk {
                file: k.clone(),
                units: (end - at) as u64 - skipped,
                from: at as u64,
                upto: end as u64,
                bundle: (resources > 0).then(
                    || json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
                ),
                resources,
                skipped,
                ignored,
            });
            if !sent {
                return Ok(());
            }
            at = end;
        }
        Ok(())
    }
}

/// Imports the files as `principal`; `progress` shows lines done of all lines.
pub async fn run(
    app: &Arc<App>,
    principal: &Principal,
    files: &[PathBuf],
    chunk: usize,
    progress: &indicatif::ProgressBar,
) -> Result<Summary> {
    let started = Instant::now();
    let state_path = app.config.data_dir.join("import-state.json");
    std::fs::create_dir_all(&app.config.data_dir)
        .map_err(|e| Error::internal(format!("{}: {e}", app.config.data_dir.display())))?;
    let mut state = State::load(&state_path);
    app.store.bulk_load(true).await?;
    let outcome = load(
        app,
        principal,
        files,
        chunk,
        progress,
        &mut state,
        &state_path,
    )
    .await;
    // Back to normal service whether or not the load went through.
    let restored = app.store.bulk_load(false).await;
    let mut summary = outcome?;
    restored?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The import proper: chunks read ahead on a thread, two submitted at a time.
async fn load(
    app: &Arc<App>,
    principal: &Principal,
    files: &[PathBuf],
    chunk: usize,
    progress: &indicatif::ProgressBar,
    state: &mut State,
    state_path: &Path,
) -> Result<Summary> {
    let mut summary = Summary {
        files: files.len(),
        ..Default::default()
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Chunk>>(4);
    let reader = Reader {
        files: files.to_vec(),
        chunk,
        done: state.clone(),
        resource_types: app.structure.resource_types().map(str::to_owned).collect(),
        progress: progress.clone(),
    };
    let reading = tokio::task::spawn_blocking(move || reader.run(&sender));
    let chunks =
        futures::stream::unfold(
            receiver,
            |mut r| async move { r.recv().await.map(|c| (c, r)) },
        );
    // Three in flight, each on a task of its own: two are prepared (parsed, validated, indexed)
    // on both cores while the third is written by the store's one writer. (Polled inside this
    // one task instead, the preparation ran on one thread and the writer waited: ~70 % of two
    // cores used.) After a failure no new chunk starts; those beside it are still recorded.
    // Chunks may commit out of order; the state records line ranges, so a resume is exact.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    let mut results = Box::pin(
        chunks
            .map(|c| async move {
                let mut c = match c {
                    Ok(c) => c,
                    Err(e) => return (None, Some(Err(e))),
                };
                let r = match c.bundle.take() {
                    _ if stop.load(std::sync::atomic::Ordering::SeqCst) => None,
                    None => Some(Ok(())),
                    Some(bundle) => {
                        let (app, principal) = (app.clone(), principal.clone());
                        let task = tokio::spawn(async move {
                            crate::submit::bundle(&app, &principal, bundle, "gateway import").await
                        });
                        Some(task.await.unwrap_or_else(|e| {
                            Err(Error::internal(format!("an import task failed: {e}")))
                        }))
                    }
                };
                (Some(c), r)
            })
            .buffered(3),
    );
    let mut failed = None;
    while let Some((c, r)) = results.next().await {
        let file = c.as_ref().map(|c| c.file.clone()).unwrap_or_default();
        match r {
            None => {}
            Some(Err(e)) => {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                failed.get_or_insert(if file.is_empty() { e } else { e.at(&file) });
            }
            Some(Ok(())) => {
                let c = c.expect("a chunk when it succeeded");
                summary.skipped += c.skipped;
                summary.ignored += c.ignored;
                progress.inc(c.skipped);
                if c.units > 0 {
                    state.add(&c.file, c.from, c.upto);
                    state.save(state_path)?;
                }
                summary.resources += c.resources;
                progress.inc(c.units);
            }
        }
    }
    drop(results);
    let _ = reading.await;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(summary)
}
