//! Reading `visitor_id,user_id` CSV files for `pendo-segment idmap load`: every row is checked
//! and every invalid row is reported with its line number; nothing is skipped silently.

use std::collections::HashMap;
use std::io::Read;

/// Longest id accepted (Pendo and Segment ids are far shorter; longer is a data error).
pub const MAX_ID_LEN: usize = 1024;

/// One valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvMapping {
    /// 1-based line of the row.
    pub line: u64,
    /// Pendo visitor id.
    pub visitor_id: String,
    /// Segment user id.
    pub user_id: String,
}

/// One invalid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvProblem {
    /// 1-based line of the row.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// A checked file.
#[derive(Debug, Default)]
pub struct CheckedCsv {
    /// Valid rows, in file order (identical repeats removed).
    pub mappings: Vec<CsvMapping>,
    /// Invalid rows.
    pub problems: Vec<CsvProblem>,
    /// Rows that repeated an earlier row exactly.
    pub repeats: u64,
    /// Whether a `visitor_id,user_id` header line was present.
    pub had_header: bool,
}

fn check_id(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.trim() != s {
        return Err(format!("{what} `{s}` has leading or trailing whitespace"));
    }
    if s.len() > MAX_ID_LEN {
        return Err(format!(
            "{what} is {} bytes long (max {MAX_ID_LEN})",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

/// Reads and checks a whole file. Conflicting rows (same visitor, different user) are problems.
pub fn check_csv(input: impl Read) -> CheckedCsv {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut out = CheckedCsv::default();
    let mut seen: HashMap<String, (u64, String)> = HashMap::new();
    for (index, record) in reader.records().enumerate() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(index as u64 + 1);
                out.problems.push(CsvProblem {
                    line,
                    message: format!("not valid CSV: {e}"),
                });
                continue;
            }
        };
        let line = record
            .position()
            .map(|p| p.line())
            .unwrap_or(index as u64 + 1);
        if index == 0 && record.len() == 2 && &record[0] == "visitor_id" && &record[1] == "user_id"
        {
            out.had_header = true;
            continue;
        }
        if record.len() == 1 && record[0].is_empty() {
            out.problems.push(CsvProblem {
                line,
                message: "empty line".into(),
            });
            continue;
        }
        if record.len() != 2 {
            out.problems.push(CsvProblem {
                line,
                message: format!(
                    "expected 2 columns (visitor_id,user_id), found {}",
                    record.len()
                ),
            });
            continue;
        }
        let (visitor, user) = (&record[0], &record[1]);
        if let Err(message) =
            check_id("visitor_id", visitor).and_then(|_| check_id("user_id", user))
        {
            out.problems.push(CsvProblem { line, message });
            continue;
        }
        match seen.get(visitor) {
            Some((_, u)) if u == user => {
                out.repeats += 1;
                continue;
            }
            Some((first, u)) => {
                out.problems.push(CsvProblem {
                    line,
                    message: format!(
                        "visitor `{visitor}` is mapped to `{u}` on line {first} and to `{user}` here"
                    ),
                });
                continue;
            }
            None => {
                seen.insert(visitor.to_string(), (line, user.to_string()));
            }
        }
        out.mappings.push(CsvMapping {
            line,
            visitor_id: visitor.to_string(),
            user_id: user.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "visitor_id,user_id\nv1,u1\nv2\n,u3\nv4,u4,extra\n\"v5\",\"u,5\"\nv1,u1\nv1,other\n v6,u6\n";
        let c = check_csv(text.as_bytes());
        assert!(c.had_header);
        assert_eq!(
            c.mappings
                .iter()
                .map(|m| (m.line, m.visitor_id.as_str(), m.user_id.as_str()))
                .collect::<Vec<_>>(),
            vec![(2, "v1", "u1"), (6, "v5", "u,5")]
        );
        assert_eq!(c.repeats, 1);
        let lines: Vec<u64> = c.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 8, 9], "{:?}", c.problems);
        assert!(c.problems[0].message.contains("2 columns"));
        assert!(c.problems[1].message.contains("visitor_id is empty"));
        assert!(c.problems[3].message.contains("line 2"));
        assert!(c.problems[4].message.contains("whitespace"));
    }

    #[test]
    fn headerless_files_work() {
        let c = check_csv("a,b\nc,d\n".as_bytes());
        assert!(!c.had_header);
        assert_eq!(c.mappings.len(), 2);
        assert!(c.problems.is_empty());
    }
}
