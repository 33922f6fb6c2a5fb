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
            // Scalars are resolved to their YAML types first (null, booleans, numbers,
            // strings), then the document is deserialized from that value, which is strict
            // about types as JSON is. Deserializing from the text directly hands any plain
            // scalar to a string field as its text: `selector: null` became "null".
            let value: serde_norway::Value =
                serde_norway::from_str(text).map_err(|e| problem(String::new(), e.to_string()))?;
            serde_path_to_error::deserialize(value)
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

    /// Each case: (document, field, part of the reason). A YAML value of another type than the
    /// field's is refused on that field, as JSON refuses it; it is never turned into text.
    #[test]
    fn yaml_values_of_the_wrong_type_are_refused_on_their_field() {
        use crate::api::{CreateEnrollmentToken, FragmentWrite, NodePatch};
        fn fails<T: DeserializeOwned + std::fmt::Debug>(yaml: &str) -> Result<Problem, String> {
            match parse_document::<T>(yaml.as_bytes(), Format::Yaml) {
                Ok(v) => Err(format!("accepted as {v:?}")),
                Err(p) => Ok(p),
            }
        }
        let cases: Vec<(&str, Result<Problem, String>, &str, &str)> = vec![
            (
                "selector: null",
                fails::<FragmentWrite>("selector: null\nspec: {}\n"),
                "selector",
                "invalid type: unit value, expected a string",
            ),
            (
                "selector: true",
                fails::<FragmentWrite>("selector: true\nspec: {}\n"),
                "selector",
                "invalid type: boolean `true`, expected a string",
            ),
            (
                "selector: 7",
                fails::<FragmentWrite>("selector: 7\nspec: {}\n"),
                "selector",
                "invalid type: integer `7`, expected a string",
            ),
            (
                "description: true",
                fails::<CreateEnrollmentToken>("description: true\n"),
                "description",
                "invalid type: boolean `true`, expected a string",
            ),
            (
                "token label false",
                fails::<CreateEnrollmentToken>("labels: {role: false}\n"),
                "labels.role",
                "invalid type: boolean `false`, expected a string",
            ),
            (
                "patch label false",
                fails::<NodePatch>("labels: {role: false}\n"),
                "labels.role",
                "invalid type: boolean `false`, expected a string",
            ),
            (
                "image: null",
                fails::<NodeSpec>("containers: [{name: a, image: null}]\n"),
                "containers[0].image",
                "invalid type: unit value",
            ),
            (
                "name: 12",
                fails::<NodeSpec>("containers: [{name: 12, image: x}]\n"),
                "containers[0].name",
                "invalid type: integer `12`",
            ),
            (
                "env value true",
                fails::<NodeSpec>("containers: [{name: a, image: x, env: {DEBUG: true}}]\n"),
                "containers[0].env.DEBUG",
                "invalid type: boolean `true`",
            ),
            (
                "container label false",
                fails::<NodeSpec>("containers: [{name: a, image: x, labels: {tier: false}}]\n"),
                "containers[0].labels.tier",
                "invalid type: boolean `false`",
            ),
            (
                "command entry null",
                fails::<NodeSpec>("containers: [{name: a, image: x, command: [sh, null]}]\n"),
                "containers[0].command[1]",
                "invalid type: unit value",
            ),
            (
                "payload version 1.5",
                fails::<NodeSpec>("payloads: [{name: p, version: 1.5, path: /p}]\n"),
                "payloads[0].version",
                "invalid type: floating point `1.5`",
            ),
            (
                "port as number",
                fails::<NodeSpec>("containers: [{name: a, image: x, ports: [80]}]\n"),
                "containers[0].ports[0]",
                "invalid type: integer `80`",
            ),
            (
                "stp as text",
                fails::<NodeSpec>("networks: {bridges: [{name: br0, stp: \"no\"}]}\n"),
                "networks.bridges[0].stp",
                "invalid type: string \"no\", expected a boolean",
            ),
            (
                "vlan id as text",
                fails::<NodeSpec>("networks: {vlans: [{name: v, parent: eth1, id: \"7\"}]}\n"),
                "networks.vlans[0].id",
                "invalid type: string \"7\"",
            ),
        ];
        let mut failures = Vec::new();
        for (name, got, field, reason) in cases {
            match got {
                Ok(p) if p.field == field && p.reason.contains(reason) => {}
                Ok(p) => failures.push(format!(
                    "{name}: wanted `{field}: ...{reason}...`, got `{p}`"
                )),
                Err(e) => failures.push(format!("{name}: wanted `{field}: ...{reason}...`, {e}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn valid_yaml_keeps_its_strings_and_numbers() {
        let yaml = "containers:\n  - name: \"007\"\n    image: nginx:1.27\n    \
                    env: {PORT: \"8080\", DEBUG: \"true\", EMPTY: \"\", OCTAL: 0644}\n    \
                    labels: {tier: \"false\"}\n    ports: [\"8080:80/tcp\", 9090:90]\n    \
                    resources: {cpus: 0.5, memory: 256Mi}\n    healthcheck: {tcp: \"127.0.0.1:80\", retries: 3}\n\
                    payloads:\n  - {name: p, version: \"1.5\", path: /p, mode: \"0644\"}\n\
                    networks:\n  vlans: [{name: v, parent: eth1, id: 7, mtu: 1500}]\n";
        let spec: NodeSpec = parse_document(yaml.as_bytes(), Format::Yaml).unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.name, "007");
        assert_eq!(c.env["PORT"], "8080");
        assert_eq!(c.env["DEBUG"], "true");
        assert_eq!(c.env["EMPTY"], "");
        // YAML 1.2: digits with a leading zero are a string, not a number.
        assert_eq!(c.env["OCTAL"], "0644");
        assert_eq!(c.labels["tier"], "false");
        assert_eq!(c.ports, ["8080:80/tcp", "9090:90"]);
        assert_eq!(spec.payloads[0].version, "1.5");
        assert_eq!(spec.payloads[0].mode.as_deref(), Some("0644"));
        assert_eq!(spec.networks.vlans[0].id, 7);
        let empty: NodeSpec = parse_document(b"", Format::Yaml).unwrap();
        assert_eq!(empty, NodeSpec::default());
        let example = include_str!("../../examples/node-spec.yaml");
        parse_document::<NodeSpec>(example.as_bytes(), Format::Yaml).unwrap();
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
