//! Dry runs: a sink that has no account to write to appends each request it would send, as one
//! JSON line, to a file (`segment_sink.dry_run_file`, `pendo_sink.dry_run_file`), so a new user
//! sees exactly what would be sent without any account.

use std::io::Write;
use std::path::PathBuf;

/// Appends `line` (JSON; raw line breaks, insignificant in valid JSON, become spaces) and a
/// newline to `path` in one write, so lines of concurrent requests never interleave.
pub async fn append_json_line(path: PathBuf, mut line: Vec<u8>) -> Result<(), String> {
    for b in &mut line {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    line.push(b'\n');
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(&line)?;
        f.flush()
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("dry run: cannot write {shown}: {e}")),
        Err(e) => Err(format!("dry run: writer task failed: {e}")),
    }
}
