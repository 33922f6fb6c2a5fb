//! Errors of stewardctl: how each is reported on stderr and which exit code it maps to.

use steward_proto::Problem;

/// Exit codes (documented in the top-level `--help`).
pub mod code {
    pub const OK: u8 = 0;
    pub const DIFFERS: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const AUTH: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const INVALID: u8 = 6;
    pub const SERVER: u8 = 7;
}

/// Everything a command can fail with.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, configuration or local files (exit 2).
    Usage(String),
    /// The registry could not be reached (exit 3).
    Unreachable(String),
    /// The registry answered with a non-2xx status.
    Api {
        status: u16,
        error: String,
        problems: Vec<Problem>,
        hint: Option<String>,
    },
    /// A local document did not parse (exit 6, like the registry's 400).
    Invalid {
        error: String,
        problems: Vec<Problem>,
    },
    /// The registry answered something this CLI does not understand (exit 7).
    Unexpected(String),
}

/// Exit code for a non-2xx HTTP status.
pub fn exit_code_for_status(status: u16) -> u8 {
    match status {
        401 | 403 => code::AUTH,
        404 => code::NOT_FOUND,
        400 | 409 | 412 | 413 | 415 | 422 => code::INVALID,
        _ => code::SERVER,
    }
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => code::USAGE,
            CliError::Unreachable(_) => code::UNREACHABLE,
            CliError::Api { status, .. } => exit_code_for_status(*status),
            CliError::Invalid { .. } => code::INVALID,
            CliError::Unexpected(_) => code::SERVER,
        }
    }

    /// The lines printed on stderr: `error: ...`, then one `  field: reason` per problem.
    pub fn lines(&self) -> Vec<String> {
        let (error, problems, hint) = match self {
            CliError::Usage(m) | CliError::Unreachable(m) | CliError::Unexpected(m) => {
                (m.as_str(), &[][..], None)
            }
            CliError::Api {
                error,
                problems,
                hint,
                ..
            } => (error.as_str(), &problems[..], hint.as_deref()),
            CliError::Invalid { error, problems } => (error.as_str(), &problems[..], None),
        };
        let mut out = vec![format!("error: {}", headline(error, problems))];
        out.extend(
            problems
                .iter()
                .map(|p| format!("  {}: {}", p.field, p.reason)),
        );
        if let Some(h) = hint {
            out.push(format!("hint: {h}"));
        }
        out
    }

    /// Prints the error on stderr.
    pub fn report(&self) {
        for l in self.lines() {
            eprintln!("{l}");
        }
    }
}

/// The registry's message without the problems it repeats inline (`invalid input: a; b` becomes
/// `invalid input`), since every problem gets its own line below it.
fn headline<'a>(error: &'a str, problems: &[Problem]) -> &'a str {
    let Some(first) = problems.first() else {
        return error;
    };
    let all_inline = problems.iter().all(|p| error.contains(&p.to_string()));
    match error.find(&first.to_string()) {
        Some(at) if all_inline && at > 0 => error[..at].trim_end_matches([' ', ':']),
        _ => error,
    }
}

/// A readable one-line description of an error and all its sources.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        assert_eq!(exit_code_for_status(401), 4);
        assert_eq!(exit_code_for_status(403), 4);
        assert_eq!(exit_code_for_status(404), 5);
        for s in [400, 409, 412, 413] {
            assert_eq!(exit_code_for_status(s), 6, "{s}");
        }
        assert_eq!(exit_code_for_status(500), 7);
        assert_eq!(exit_code_for_status(503), 7);
    }

    #[test]
    fn variants_map_to_exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::Unreachable("x".into()).exit_code(), 3);
        assert_eq!(CliError::Unexpected("x".into()).exit_code(), 7);
        let invalid = CliError::Invalid {
            error: "x".into(),
            problems: vec![],
        };
        assert_eq!(invalid.exit_code(), 6);
    }

    #[test]
    fn api_errors_list_every_problem() {
        let e = CliError::Api {
            status: 400,
            error: "invalid input".into(),
            problems: vec![
                Problem::new("containers[0].image", "must not be empty"),
                Problem::new("vms[1].memory", "not a quantity"),
            ],
            hint: None,
        };
        assert_eq!(
            e.lines(),
            vec![
                "error: invalid input",
                "  containers[0].image: must not be empty",
                "  vms[1].memory: not a quantity",
            ]
        );
        assert_eq!(e.exit_code(), 6);
    }

    #[test]
    fn problems_repeated_in_the_message_are_shown_once() {
        let p = vec![Problem::new("a", "bad"), Problem::new("b", "worse")];
        assert_eq!(
            headline("invalid input: a: bad; b: worse", &p),
            "invalid input"
        );
        assert_eq!(headline("conflict", &p), "conflict");
        assert_eq!(headline("a: bad", &p[..1]), "a: bad");
        assert_eq!(headline("plain", &[]), "plain");
    }
}
