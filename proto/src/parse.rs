//! Parsing specs from JSON or YAML, with the field path of any error.

use crate::validate::Problem;
use serde::de::DeserializeOwned;

/// Document formats the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// Picks the format from a `Content-Type` value (YAML for `*yaml*`, JSON otherwise).
    pub fn from_content_type(ct: Option<&str>) -> Self {
        match ct {
            Some(ct) if ct.contains("yaml") => Format::Yaml,
            _ => Format::Json,
        }
    }

    /// Picks the format from a file name (`.yaml`/`.yml` → YAML, else JSON).
    pub fn from_path(path: &str) -> Self {
        if path.ends_with(".yaml") || path.ends_with(".yml") {
            Format::Yaml
        } else {
            Format::Json
        }
    }
}

/// Parses a document; on failure returns one problem naming the field where parsing stopped.
pub fn parse_document<T: DeserializeOwned>(bytes: &[u8], format: Format) -> Result<T, Problem> {
    let problem = |path: String, e: String| {
        let field = if path == "." || path == "?" || path.is_empty() {
            "(document)".to_string()
        } else {
            path
        };
        Problem::new(field, e)
    };
    match format {
        Format::Json => {
            let de = &mut serde_json::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(de)
                .map_err(|e| problem(e.path().to_string(), e.inner().to_string()))
        }
        Format::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| Problem::new("(document)", format!("not UTF-8: {e}")))?;
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| problem(e.path().to_string(), e.inner().to_string()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::NodeSpec;

    #[test]
    fn unknown_field_is_refused_with_its_path() {
        let err = parse_document::<NodeSpec>(
            br#"{"containers":[{"name":"a","image":"x","colour":"red"}]}"#,
            Format::Json,
        )
        .unwrap_err();
        assert_eq!(err.field, "containers[0].colour");
        assert!(
            err.reason.contains("unknown field `colour`"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn yaml_and_json_give_the_same_spec() {
        let yaml = "containers:\n  - name: web\n    image: nginx:1.27\n    env: {MODE: lab}\n";
        let json = br#"{"containers":[{"name":"web","image":"nginx:1.27","env":{"MODE":"lab"}}]}"#;
        let a: NodeSpec = parse_document(yaml.as_bytes(), Format::Yaml).unwrap();
        let b: NodeSpec = parse_document(json, Format::Json).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.containers[0].env["MODE"], "lab");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = parse_document::<NodeSpec>(
            b"networks:\n  vlans:\n    - {name: v, parent: eth1, id: 70000}\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert_eq!(err.field, "networks.vlans[0].id");
    }
}
