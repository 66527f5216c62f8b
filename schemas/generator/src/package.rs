//! Reading the pinned npm package: its JSON files, selected by path.

use serde_json::Value;
use std::io::Read;

/// `(path, parsed JSON)` of every file in the package tarball whose path `wanted` accepts, in
/// archive order.
pub fn json_files(
    tgz: &[u8],
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Value)>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut out = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        if !wanted(&path) {
            continue;
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| format!("{path}: {e}"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        out.push((path, v));
    }
    Ok(out)
}
