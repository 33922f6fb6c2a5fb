//! The rule for resource names used in URLs (fragment and payload names).

use steward_proto::Problem;

/// Checks a resource name: 1-63 letters, digits, '-', '_' or '.', starting with a letter or
/// digit. The problem names `field`.
pub fn check_name(field: &str, name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            field,
            format!("{name:?} must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ))
    }
}
