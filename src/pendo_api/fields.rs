//! What Pendo accepts as metadata fields: checked by the reverse flow's rules when they are
//! loaded and by the Pendo sink before it sends, so a name Pendo would refuse never gets far.

/// Field groups the bulk endpoint accepts.
pub const FIELD_GROUPS: [&str; 2] = ["custom", "agent"];

/// Whether `name` is a valid Pendo field name: letters, digits and `_`, starting with a letter
/// or `_` (Pendo refuses other names, so they are dead-lettered before sending).
pub fn valid_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
