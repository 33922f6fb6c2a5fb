//! Global options and their resolution: flags > environment > config file > defaults.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;
use reqwest::Url;
use serde::Deserialize;
use steward_proto::endpoints::{join_list, split_list};

use crate::error::CliError;

/// Registry used when no flag, variable or config file names one.
pub const DEFAULT_REGISTRY: &str = "http://127.0.0.1:7700";

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables, listings and YAML.
    Table,
    /// The registry's JSON answers, pretty-printed (one object per line for `events --follow`).
    Json,
}

/// Options accepted before or after any subcommand.
#[derive(clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Base URL of the registry [default: http://127.0.0.1:7700], or several URLs of one
    /// registry's replicas separated by commas: a request that cannot reach one goes to the
    /// next.
    #[arg(
        long,
        global = true,
        env = "STEWARD_REGISTRY",
        value_name = "URL[,URL...]"
    )]
    pub registry: Option<String>,

    /// Bearer token (admin or read-only). Prefer --token-file: command lines are visible to
    /// other users of the machine.
    #[arg(
        long,
        global = true,
        env = "STEWARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// File holding the bearer token (surrounding whitespace is ignored).
    #[arg(long, global = true, env = "STEWARD_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Config file (TOML: registry, token, token_file, ca_file) [default:
    /// ~/.config/steward/stewardctl.toml, if it exists]. A file given explicitly must exist.
    #[arg(long, global = true, env = "STEWARD_CTL_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Extra PEM root certificate(s) to trust for an https registry, e.g. a private CA.
    #[arg(long, global = true, env = "STEWARD_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Print only the essentials: ids for lists, nothing for confirmations, no notes on
    /// stderr. Errors are still reported.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

/// The config file's shape. Deliberately no `Debug`: it may hold a token.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    registry: Option<UrlList>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// `registry` in the config file: one URL (or a comma-separated list) or a list of URLs.
#[derive(Deserialize)]
#[serde(untagged)]
enum UrlList {
    One(String),
    Many(Vec<String>),
}

/// Resolved settings. Deliberately no `Debug`: it holds the token.
pub struct Settings {
    /// The registry's URLs (at least one), in the order they are tried.
    pub registries: Vec<Url>,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// Resolves the global options; `matches` tells flags from environment variables.
pub fn resolve(args: &GlobalArgs, matches: &ArgMatches) -> Result<Settings, CliError> {
    let file = match &args.config {
        Some(p) => load(p)?,
        None => match default_config_path() {
            Some(p) if p.is_file() => load(&p)?,
            _ => FileConfig::default(),
        },
    };
    let raw = args
        .registry
        .clone()
        .or(match &file.registry {
            Some(UrlList::One(s)) => Some(s.clone()),
            Some(UrlList::Many(v)) => Some(join_list(v)),
            None => None,
        })
        .unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
    let registries = parse_registry_urls(&raw)?;
    let token = match pick_token_source(args, matches, &file)? {
        None => None,
        Some(TokenSource::Literal(t)) => Some(check_token(t.trim().to_string(), "the token")?),
        Some(TokenSource::File(p)) => Some(read_token_file(&p)?),
    };
    Ok(Settings {
        registries,
        token,
        ca_file: args.ca_file.clone().or(file.ca_file),
    })
}

/// `$XDG_CONFIG_HOME/steward/stewardctl.toml`, else `~/.config/steward/stewardctl.toml`.
fn default_config_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("steward").join("stewardctl.toml"))
}

fn load(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("reading config file {}: {e}", path.display())))?;
    let mut cfg = parse_file_config(&text)
        .map_err(|e| CliError::Usage(format!("config file {}: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    cfg.token_file = cfg.token_file.map(|p| relative_to(dir, &p));
    cfg.ca_file = cfg.ca_file.map(|p| relative_to(dir, &p));
    if cfg.token.is_some() && cfg.token_file.is_some() {
        return Err(CliError::Usage(format!(
            "config file {} sets both token and token_file; keep one",
            path.display()
        )));
    }
    Ok(cfg)
}

fn parse_file_config(text: &str) -> Result<FileConfig, String> {
    // toml's messages quote the offending line; for the `token` line that would print the token.
    toml::from_str(text).map_err(|e: toml::de::Error| match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_string(),
    })
}

/// Expands a leading `~/` and makes relative paths relative to the config file's directory.
fn relative_to(dir: &Path, p: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if p.is_relative() {
        dir.join(p)
    } else {
        p.to_path_buf()
    }
}

/// Checks every URL of a comma-separated list (the error names the first bad one).
pub fn parse_registry_urls(raw: &str) -> Result<Vec<Url>, CliError> {
    let urls = split_list(raw).map_err(|e| CliError::Usage(format!("registry {raw:?}: {e}")))?;
    urls.iter().map(|u| parse_registry_url(u)).collect()
}

/// Checks and normalises the registry URL (http or https, no query or fragment).
pub fn parse_registry_url(raw: &str) -> Result<Url, CliError> {
    let bad = |why: String| CliError::Usage(format!("invalid registry URL {raw:?}: {why}"));
    let url = Url::parse(raw.trim()).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https".into()));
    }
    if url.host_str().is_none() {
        return Err(bad("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment allowed".into()));
    }
    Ok(url)
}

enum TokenSource {
    Literal(String),
    File(PathBuf),
}

/// 2 for a flag, 1 for an environment variable, `None` when not given.
fn level(m: &ArgMatches, id: &str) -> Option<u8> {
    match m.value_source(id) {
        Some(ValueSource::CommandLine) => Some(2),
        Some(ValueSource::EnvVariable) => Some(1),
        _ => None,
    }
}

/// Token and token file compete level by level: a flag beats a variable beats the file.
fn pick_token_source(
    args: &GlobalArgs,
    m: &ArgMatches,
    file: &FileConfig,
) -> Result<Option<TokenSource>, CliError> {
    let literal = args.token.clone().map(TokenSource::Literal);
    let path = args.token_file.clone().map(TokenSource::File);
    let chosen = match (level(m, "token"), level(m, "token_file")) {
        (Some(a), Some(b)) if a == b => {
            return Err(CliError::Usage(if a == 2 {
                "give only one of --token and --token-file".into()
            } else {
                "STEWARD_TOKEN and STEWARD_TOKEN_FILE are both set; unset one".into()
            }))
        }
        (Some(a), Some(b)) if a > b => literal,
        (Some(_), Some(_)) => path,
        (Some(_), None) => literal,
        (None, Some(_)) => path,
        (None, None) => None,
    };
    Ok(chosen
        .or_else(|| file.token.clone().map(TokenSource::Literal))
        .or_else(|| file.token_file.clone().map(TokenSource::File)))
}

fn read_token_file(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("reading token file {}: {e}", path.display())))?;
    check_token(
        text.trim().to_string(),
        &format!("token file {}", path.display()),
    )
}

/// Refuses tokens that cannot be sent in a header, without ever echoing them.
fn check_token(token: String, what: &str) -> Result<String, CliError> {
    if token.is_empty() {
        return Err(CliError::Usage(format!("{what} is empty")));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(CliError::Usage(format!(
            "{what} holds characters a bearer token cannot have (only printable ASCII without spaces)"
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_url_must_be_http() {
        assert!(parse_registry_url("http://127.0.0.1:7700").is_ok());
        assert!(parse_registry_url("https://reg.example/steward/").is_ok());
        assert!(parse_registry_url("ftp://x").is_err());
        assert!(parse_registry_url("127.0.0.1:7700").is_err());
        assert!(parse_registry_url("http://x/?a=b").is_err());
    }

    #[test]
    fn registry_lists_are_checked_url_by_url() {
        let urls = parse_registry_urls("http://a:7700, https://b:7700/x").unwrap();
        let urls: Vec<&str> = urls.iter().map(Url::as_str).collect();
        assert_eq!(urls, ["http://a:7700/", "https://b:7700/x"]);
        match parse_registry_urls("http://a:7700,b:7700") {
            Err(CliError::Usage(m)) => assert!(m.contains("\"b:7700\""), "{m}"),
            _ => panic!("a bad second URL was accepted"),
        }
        assert!(parse_registry_urls(",").is_err());
        let file = parse_file_config("registry = [\"http://a:1\", \"http://b:1\"]\n");
        assert!(
            matches!(file, Ok(FileConfig { registry: Some(UrlList::Many(v)), .. }) if v.len() == 2)
        );
    }

    #[test]
    fn config_file_refuses_unknown_fields_without_echoing_lines() {
        let ok = parse_file_config("registry = \"http://r:7700\"\ntoken_file = \"t\"\n");
        assert!(ok.is_ok());
        let err = match parse_file_config("token = \"sekrit\"\ncolour = 1\n") {
            Err(e) => e,
            Ok(_) => panic!("unknown field accepted"),
        };
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("colour"), "{err}");
        let err = match parse_file_config("token = sekrit-unquoted\n") {
            Err(e) => e,
            Ok(_) => panic!("bad TOML accepted"),
        };
        assert!(!err.contains("sekrit"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = Path::new("/etc/steward");
        assert_eq!(
            relative_to(dir, Path::new("token")),
            PathBuf::from("/etc/steward/token")
        );
        assert_eq!(relative_to(dir, Path::new("/t")), PathBuf::from("/t"));
    }

    #[test]
    fn tokens_are_checked_without_being_echoed() {
        assert!(check_token("abc.def".into(), "x").is_ok());
        let e = check_token("abc def".into(), "the token");
        match e {
            Err(CliError::Usage(m)) => assert!(!m.contains("abc"), "{m}"),
            _ => panic!("accepted a token with a space"),
        }
        assert!(check_token(String::new(), "x").is_err());
    }
}
