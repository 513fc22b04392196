//! Secrets (write keys, integration keys, webhook secrets, SASL passwords).
//!
//! A [`Secret`] is written in configuration as a literal string, as `{ env = "VAR" }` or as
//! `{ file = "/run/secrets/x" }`; it is resolved once at load time and from then on can only be
//! read through [`Secret::expose`]. `Debug`, `Display` and `Serialize` never print the value, so
//! a secret cannot leak through logs, error messages or `config check`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a secret was read from; printed instead of the value so operators can tell which
/// source is in effect without seeing it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written inline in the configuration file or an environment override.
    Inline,
    /// Read from the named environment variable.
    Env(String),
    /// Read from the named file (trailing newline removed).
    File(String),
}

/// A resolved secret value that refuses to be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

impl Secret {
    /// Wraps a value given inline (used by tests and by code that builds configs).
    pub fn inline(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            source: SecretSource::Inline,
        }
    }

    /// The secret itself. Call this only where the value is sent to its destination.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the value came from, for diagnostics.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    fn describe(&self) -> String {
        match &self.source {
            SecretSource::Inline => "<redacted>".to_string(),
            SecretSource::Env(var) => format!("<redacted: from env {var}>"),
            SecretSource::File(path) => format!("<redacted: from file {path}>"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.describe())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSpec {
    Inline(String),
    Env { env: String },
    File { file: String },
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let spec = SecretSpec::deserialize(deserializer).map_err(|_| {
            D::Error::custom(
                "expected a secret: a string, { env = \"VAR\" } or { file = \"PATH\" }",
            )
        })?;
        match spec {
            SecretSpec::Inline(value) => Ok(Secret::inline(value)),
            SecretSpec::Env { env } => match std::env::var(&env) {
                Ok(value) if !value.is_empty() => Ok(Secret {
                    value,
                    source: SecretSource::Env(env),
                }),
                Ok(_) => Err(D::Error::custom(format!(
                    "environment variable {env} (named as the secret's source) is empty"
                ))),
                Err(_) => Err(D::Error::custom(format!(
                    "environment variable {env} (named as the secret's source) is not set"
                ))),
            },
            SecretSpec::File { file } => match std::fs::read_to_string(&file) {
                Ok(contents) => {
                    let value = contents.trim_end_matches(['\n', '\r']).to_string();
                    if value.is_empty() {
                        return Err(D::Error::custom(format!("secret file {file} is empty")));
                    }
                    Ok(Secret {
                        value,
                        source: SecretSource::File(file),
                    })
                }
                Err(e) => Err(D::Error::custom(format!(
                    "cannot read secret file {file}: {e}"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Holder {
        key: Secret,
    }

    #[test]
    fn inline_secret_is_redacted_everywhere() {
        let h: Holder = toml::from_str(r#"key = "sk_live_123""#).unwrap();
        assert_eq!(h.key.expose(), "sk_live_123");
        assert!(!format!("{h:?}").contains("sk_live_123"));
        assert!(!h.key.to_string().contains("sk_live_123"));
        assert_eq!(
            serde_json::to_string(&h.key).unwrap(),
            "\"<redacted>\"".to_string()
        );
    }

    #[test]
    fn file_secret_drops_trailing_newline_and_names_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wk");
        std::fs::write(&path, "from-file\n").unwrap();
        let text = format!("key = {{ file = \"{}\" }}", path.display());
        let h: Holder = toml::from_str(&text).unwrap();
        assert_eq!(h.key.expose(), "from-file");
        assert!(format!("{:?}", h.key).contains("from file"));
        assert!(!format!("{:?}", h.key).contains("from-file"));
    }

    #[test]
    fn missing_env_secret_names_the_variable() {
        let err = toml::from_str::<Holder>(r#"key = { env = "PS_TEST_SURELY_UNSET_VAR" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PS_TEST_SURELY_UNSET_VAR"), "{err}");
    }
}
