//! `stewardctl cloud-init`: renders cloud-init user-data that installs the agent on a new host,
//! configures it (registry URL, certificate pin, a fresh enrolment token) and starts it.
//!
//! The templates live in `cloud-init/` and are compiled in: `registry` installs the `.deb` the
//! registry serves (checked against the sha256 it announces), `apt` installs from an apt
//! repository. `{{name}}` placeholders are filled in; a line holding only a placeholder (or
//! `# {{name}}`) takes a block, indented like the placeholder, and is dropped when the block is
//! empty.

use std::collections::BTreeMap;
use std::path::PathBuf;

use reqwest::{Method, Url};
use sha2::{Digest, Sha256};
use steward_proto::{CreateEnrollmentToken, EnrollmentTokenCreated, Labels, PackageInfo};

use crate::error::{chain, CliError};
use crate::output::{self, relative};
use crate::{Ctx, Exit};

const REGISTRY_TEMPLATE: &str = include_str!("../../../../cloud-init/registry.yaml");
const APT_TEMPLATE: &str = include_str!("../../../../cloud-init/apt.yaml");

/// Where the new host gets the agent package from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// The registry's packages_dir (GET /packages/...), checked against its sha256.
    Registry,
    /// An apt repository (--apt-source, optionally --apt-key-file).
    Apt,
}

#[derive(clap::Args)]
pub struct CloudInitArgs {
    /// Where the new host gets the agent package from.
    #[arg(long, value_enum, default_value_t = Template::Registry)]
    template: Template,
    /// A template file of your own instead of the built-in one (same placeholders).
    #[arg(long, value_name = "PATH")]
    template_file: Option<PathBuf>,
    /// Labels the node gets (through its enrolment token), comma-separated.
    #[arg(long, value_name = "KEY=VALUE,...", value_delimiter = ',',
          value_parser = crate::tokens::parse_label)]
    labels: Vec<(String, String)>,
    /// How many hosts may enrol with the token in this user-data.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    uses: u32,
    /// Lifetime of that token, e.g. `30m`, `24h`, `7d`.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    expires_in: String,
    /// Free text shown in `tokens list` [default: stewardctl cloud-init].
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// The registry URL as the new host reaches it [default: --registry].
    #[arg(long, value_name = "URL")]
    agent_registry: Option<String>,
    /// sha256 of the registry's certificate for the agent to pin [default: the certificate
    /// the registry presents to stewardctl, when both URLs are https].
    #[arg(long, value_name = "SHA256", conflicts_with = "no_ca_pin")]
    ca_pin: Option<String>,
    /// Do not pin: the agent checks the registry's certificate against the system's CAs.
    #[arg(long)]
    no_ca_pin: bool,
    /// Debian architecture of the new host (template registry).
    #[arg(long, value_name = "ARCH", default_value = "amd64")]
    arch: String,
    /// apt source line (template apt), e.g.
    /// "deb [signed-by=$KEY_FILE] https://apt.example.net/steward bookworm main".
    #[arg(long, value_name = "LINE")]
    apt_source: Option<String>,
    /// ASCII-armoured signing key of that repository (template apt).
    #[arg(long, value_name = "PATH")]
    apt_key_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<String, String> {
    humantime::parse_duration(s).map_err(|e| format!("not a duration like 24h: {e}"))?;
    Ok(s.to_string())
}

/// A placeholder's value, or why there is none.
type Vars = BTreeMap<&'static str, Result<String, String>>;

pub async fn run(args: CloudInitArgs, ctx: &Ctx) -> Result<Exit, CliError> {
    let template = load_template(&args)?;
    // What the registry serves (and the certificate it presents), before the token exists, so
    // a failure here does not leave an unused token behind.
    let wants_package = template.contains("{{deb_");
    let probe = probe(
        ctx,
        if wants_package {
            "v1/packages"
        } else {
            "readyz"
        },
    )
    .await?;
    // By default the agent uses the URL that answered (one URL: templates use it as a base).
    let agent_url = agent_registry_url(args.agent_registry.as_deref(), &probe.url)?;
    let pin = choose_pin(&args, &agent_url, &probe, ctx)?;
    let mut vars = Vars::new();
    vars.insert("registry", Ok(agent_url.clone()));
    insert_tls_vars(&mut vars, pin.as_deref(), &agent_url);
    if wants_package {
        let packages: Vec<PackageInfo> = serde_json::from_slice(&probe.body).map_err(|e| {
            CliError::Unexpected(format!("unexpected answer to GET /v1/packages: {e}"))
        })?;
        let deb = pick_agent_package(&packages, &args.arch)?;
        vars.insert("deb_file", Ok(deb.file.clone()));
        vars.insert("deb_sha256", Ok(deb.sha256.clone()));
    }
    vars.insert(
        "apt_source",
        match &args.apt_source {
            Some(s) => check_apt_source(s).map(|()| s.clone()),
            None => Err("this template needs --apt-source".into()),
        },
    );
    vars.insert(
        "apt_key",
        match &args.apt_key_file {
            Some(p) => apt_key_block(p),
            None => Ok(String::new()),
        },
    );
    // Everything but the token is known: render once to catch template errors first.
    vars.insert("token", Ok("id.check".into()));
    render_checked(&template, &vars)?;

    let created = create_token(&args, ctx).await?;
    vars.insert("token", Ok(created.token.clone()));
    let user_data = render_checked(&template, &vars)?;
    output::stdout(&user_data);
    let i = &created.info;
    output::note(
        ctx.quiet,
        format_args!(
            "enrollment token {} created for this user-data: {} use(s), expires {} ({}){}. The \
             user-data holds the token: keep it secret.",
            i.id,
            i.uses_total,
            i.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
            relative(chrono::Utc::now(), i.expires_at),
            match &pin {
                Some(p) => format!("; registry certificate pinned ({}…)", &p[..16]),
                None => String::new(),
            }
        ),
    );
    Ok(Exit::Ok)
}

/// The template's text: `--template-file`, or the built-in one `--template` names.
fn load_template(args: &CloudInitArgs) -> Result<String, CliError> {
    Ok(match &args.template_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CliError::Usage(format!("reading template {}: {e}", p.display())))?,
        None => match args.template {
            Template::Registry => REGISTRY_TEMPLATE.to_string(),
            Template::Apt => APT_TEMPLATE.to_string(),
        },
    })
}

/// The certificate pin the agent gets: `--ca-pin`, none with `--no-ca-pin`, else the one the
/// probe saw for an https agent URL (an error when it saw none); plain HTTP is warned about.
fn choose_pin(
    args: &CloudInitArgs,
    agent_url: &str,
    probe: &Probe,
    ctx: &Ctx,
) -> Result<Option<String>, CliError> {
    match (&args.ca_pin, args.no_ca_pin) {
        (Some(p), _) => Ok(Some(normalize_pin(p)?)),
        (None, true) => Ok(None),
        (None, false) if agent_url.starts_with("https://") => match &probe.pin {
            Some(p) => Ok(Some(p.clone())),
            None => Err(CliError::Usage(format!(
                "the agent URL {agent_url} is https, but stewardctl talks to the registry over \
                 http and cannot learn its certificate: give --ca-pin SHA256 or --no-ca-pin"
            ))),
        },
        (None, false) => {
            output::note(
                ctx.quiet,
                format_args!(
                    "warning: {agent_url} is plain HTTP: the enrolment token and the node's \
                     secret travel in the clear"
                ),
            );
            Ok(None)
        }
    }
}

/// The placeholders about TLS: the agent's pin line, and curl's flags for the download.
fn insert_tls_vars(vars: &mut Vars, pin: Option<&str>, agent_url: &str) {
    vars.insert(
        "ca_pin_line",
        Ok(pin
            .map(|p| format!("ca_pin_sha256 = \"{p}\""))
            .unwrap_or_default()),
    );
    let insecure = pin.is_some() && agent_url.starts_with("https://");
    vars.insert(
        "curl_tls",
        Ok(if insecure { "--insecure" } else { "" }.into()),
    );
    vars.insert(
        "curl_tls_note",
        Ok(if insecure {
            "# The certificate is pinned by the agent, not by curl: the sha256 check below\n\
             # is what makes the download trustworthy."
                .into()
        } else {
            String::new()
        }),
    );
}

/// Creates the enrolment token the user-data carries.
async fn create_token(args: &CloudInitArgs, ctx: &Ctx) -> Result<EnrollmentTokenCreated, CliError> {
    let mut labels = Labels::new();
    for (k, v) in &args.labels {
        if labels.insert(k.clone(), v.clone()).is_some() {
            return Err(CliError::Usage(format!("label {k:?} is given twice")));
        }
    }
    let body = CreateEnrollmentToken {
        uses: Some(args.uses),
        expires_in: Some(args.expires_in.clone()),
        labels,
        description: Some(
            args.description
                .clone()
                .unwrap_or_else(|| "stewardctl cloud-init".into()),
        ),
    };
    ctx.client()?
        .send_json(Method::POST, &["v1", "enrollment-tokens"], &body)
        .await
}

/// Renders, then checks the result is YAML starting with `#cloud-config`.
fn render_checked(template: &str, vars: &Vars) -> Result<String, CliError> {
    let out = render(template, vars).map_err(CliError::Usage)?;
    if !out.starts_with("#cloud-config\n") {
        return Err(CliError::Usage(
            "the template does not start with a `#cloud-config` line".into(),
        ));
    }
    serde_norway::from_str::<serde_norway::Value>(&out)
        .map_err(|e| CliError::Usage(format!("the rendered user-data is not valid YAML: {e}")))?;
    Ok(out)
}

/// Fills in `{{name}}` placeholders; see the module documentation.
pub fn render(template: &str, vars: &Vars) -> Result<String, String> {
    let value = |name: &str| -> Result<&str, String> {
        match vars.get(name) {
            Some(Ok(v)) => Ok(v),
            Some(Err(why)) => Err(format!("{{{{{name}}}}}: {why}")),
            None => Err(format!("unknown placeholder {{{{{name}}}}}")),
        }
    };
    let mut out = String::with_capacity(template.len() + 1024);
    for line in template.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let bare = line.trim();
        let bare = bare.strip_prefix("# ").unwrap_or(bare);
        if let Some(name) = bare
            .strip_prefix("{{")
            .and_then(|r| r.strip_suffix("}}"))
            .filter(|n| !n.contains(['{', '}']))
        {
            for l in value(name.trim())?.lines() {
                out.push_str(indent);
                out.push_str(l);
                out.push('\n');
            }
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| format!("unclosed placeholder in line {line:?}"))?;
            let name = rest[start + 2..start + end].trim();
            let v = value(name)?;
            if v.contains('\n') {
                return Err(format!(
                    "{{{{{name}}}}} is several lines: put it on a line of its own"
                ));
            }
            out.push_str(&rest[..start]);
            out.push_str(v);
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

/// The agent's registry URL: checked, without a trailing slash.
fn agent_registry_url(given: Option<&str>, ctl: &Url) -> Result<String, CliError> {
    let raw = given.unwrap_or(ctl.as_str()).trim_end_matches('/');
    let url =
        Url::parse(raw).map_err(|e| CliError::Usage(format!("agent registry URL {raw:?}: {e}")))?;
    let ok_chars = raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/[]%@".contains(c));
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || !ok_chars {
        return Err(CliError::Usage(format!(
            "agent registry URL {raw:?} must be an http:// or https:// URL (letters, digits and \
             -._~:/[]%@ only)"
        )));
    }
    Ok(raw.to_string())
}

/// 64 hex digits (colons and case ignored), as lower-case hex.
fn normalize_pin(pin: &str) -> Result<String, CliError> {
    let hex: String = pin.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(CliError::Usage(format!(
            "--ca-pin {pin:?} is not a sha256: 64 hex digits, colons allowed"
        )))
    }
}

/// The newest steward-agent package for `arch`.
fn pick_agent_package<'a>(
    packages: &'a [PackageInfo],
    arch: &str,
) -> Result<&'a PackageInfo, CliError> {
    packages
        .iter()
        .filter(|p| p.package == "steward-agent" && p.arch == arch)
        .max_by(|a, b| steward_registry::api::install::dpkg_version_cmp(&a.version, &b.version))
        .ok_or_else(|| {
            let offered: Vec<&str> = packages.iter().map(|p| p.file.as_str()).collect();
            CliError::Usage(format!(
                "the registry serves no steward-agent package for {arch} (it has: {}); the \
                 steward-registry package puts one into /usr/share/steward/packages, or set the \
                 registry's packages_dir; or use --template apt",
                if offered.is_empty() {
                    "nothing".to_string()
                } else {
                    offered.join(", ")
                }
            ))
        })
}

/// An apt source line goes into a double-quoted YAML string.
fn check_apt_source(s: &str) -> Result<(), String> {
    if !s.starts_with("deb ") || s.contains(['"', '\\', '\n', '\r']) {
        return Err(format!(
            "--apt-source {s:?} must be one `deb ...` line without quotes or backslashes"
        ));
    }
    Ok(())
}

/// `key: |` followed by the armoured key, for cloud-init's apt source.
fn apt_key_block(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading --apt-key-file {}: {e}", path.display()))?;
    if !text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        || !text
            .chars()
            .all(|c| c.is_ascii_graphic() || c == ' ' || c == '\n' || c == '\r')
    {
        return Err(format!(
            "--apt-key-file {} is not an ASCII-armoured public key (gpg --armor --export)",
            path.display()
        ));
    }
    let mut block = String::from("key: |\n");
    for l in text.lines() {
        block.push_str("  ");
        block.push_str(l.trim_end());
        block.push('\n');
    }
    Ok(block)
}

/// A public GET on the registry that also yields the certificate it presents.
struct Probe {
    /// The registry URL that answered (the first of the list that could be reached).
    url: Url,
    body: Vec<u8>,
    /// sha256 of the registry's certificate, when it speaks https.
    pin: Option<String>,
}

async fn probe(ctx: &Ctx, path: &str) -> Result<Probe, CliError> {
    let s = &ctx.settings;
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("stewardctl/", env!("CARGO_PKG_VERSION")))
        .timeout(crate::client::TIMEOUT)
        .tls_info(true);
    if let Some(ca) = &s.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| CliError::Usage(format!("reading CA file {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| CliError::Usage(format!("CA file {}: {}", ca.display(), chain(&e))))?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    let http = b
        .build()
        .map_err(|e| CliError::Usage(format!("setting up HTTP: {}", chain(&e))))?;
    let mut failures = Vec::new();
    let mut answered = None;
    for base in &s.registries {
        let mut url = base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(path.split('/'));
        }
        match http.get(url.clone()).send().await {
            Ok(resp) => {
                answered = Some((base.clone(), url, resp));
                break;
            }
            Err(e) => failures.push(format!(
                "could not reach the registry at {base}: {}",
                chain(&e.without_url())
            )),
        }
    }
    let Some((base, url, resp)) = answered else {
        return Err(CliError::Unreachable(failures.join("; ")));
    };
    if !resp.status().is_success() {
        return Err(CliError::Unexpected(format!(
            "GET {url} answered {}",
            resp.status()
        )));
    }
    let pin = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(|der| hex::encode(Sha256::digest(der)));
    let body = resp
        .bytes()
        .await
        .map_err(|e| CliError::Unreachable(format!("reading {url}: {}", chain(&e))))?
        .to_vec();
    Ok(Probe {
        url: base,
        body,
        pin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&'static str, &str)]) -> Vars {
        pairs.iter().map(|(k, v)| (*k, Ok(v.to_string()))).collect()
    }

    #[test]
    fn inline_and_block_placeholders() {
        let t = "a: \"{{x}}\"\nb: |\n  first\n  {{block}}\n  # {{empty}}\n  last\n";
        let out =
            render(t, &vars(&[("x", "1"), ("block", "l1\nl2"), ("empty", "")])).expect("renders");
        assert_eq!(out, "a: \"1\"\nb: |\n  first\n  l1\n  l2\n  last\n");
    }

    #[test]
    fn unknown_missing_and_multiline_inline_values_are_errors() {
        let e = render("a: {{nope}}\n", &vars(&[])).unwrap_err();
        assert!(e.contains("unknown placeholder {{nope}}"), "{e}");
        let mut v = vars(&[]);
        v.insert("apt_source", Err("this template needs --apt-source".into()));
        let e = render("s: \"{{apt_source}}\"\n", &v).unwrap_err();
        assert!(e.contains("needs --apt-source"), "{e}");
        let e = render("s: x{{b}}\n", &vars(&[("b", "1\n2")])).unwrap_err();
        assert!(e.contains("several lines"), "{e}");
        let e = render("s: {{b\n", &vars(&[])).unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
    }

    #[test]
    fn built_in_templates_render_to_valid_yaml() {
        let mut v = vars(&[
            ("registry", "https://r.example:7700"),
            ("token", "abc.def"),
            ("ca_pin_line", "ca_pin_sha256 = \"00\""),
            ("curl_tls", "--insecure"),
            ("curl_tls_note", "# note"),
            ("deb_file", "steward-agent_0.1.0_amd64.deb"),
            ("deb_sha256", "00"),
            ("apt_source", "deb https://apt.example/ bookworm main"),
        ]);
        v.insert(
            "apt_key",
            Ok("key: |\n  -----BEGIN PGP PUBLIC KEY BLOCK-----\n  x\n".into()),
        );
        for t in [REGISTRY_TEMPLATE, APT_TEMPLATE] {
            let out = render_checked(t, &v).expect("renders");
            assert!(!out.contains("{{"), "{out}");
            assert!(out.contains("enrollment_token = \"abc.def\""), "{out}");
        }
        let apt = render_checked(APT_TEMPLATE, &v).expect("renders");
        let doc: serde_norway::Value = serde_norway::from_str(&apt).expect("yaml");
        assert_eq!(
            doc["apt"]["sources"]["steward.list"]["key"]
                .as_str()
                .map(|k| k.starts_with("-----BEGIN")),
            Some(true)
        );
    }

    #[test]
    fn urls_pins_and_apt_sources_are_checked() {
        let ctl = Url::parse("https://r.example:7700/").expect("url");
        assert_eq!(
            agent_registry_url(None, &ctl).expect("ok"),
            "https://r.example:7700"
        );
        for bad in ["ftp://x", "https://x\"y", "https://x y", "no-scheme"] {
            assert!(agent_registry_url(Some(bad), &ctl).is_err(), "{bad}");
        }
        let pin = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_pin(&pin).expect("pin"), "ab".repeat(32));
        assert!(normalize_pin("abcd").is_err());
        assert!(check_apt_source("deb https://a/ x main").is_ok());
        assert!(check_apt_source("deb \"x").is_err());
        assert!(check_apt_source("rm -rf").is_err());
    }
}
