//! Several URLs for one registry (replicas, or addresses of one load balancer) and which one a
//! client uses: parsing the comma-separated list, the rotation on a connection error, and the
//! rule for which failures move to the next URL. Pure logic shared by the agent's client and
//! `stewardctl`; each side parses a URL its own way and does its own HTTP.
//!
//! The rotation is lock-free: `current` is an index, and [`Endpoints::failed`] only moves it if
//! it still points at the URL that failed, so two tasks failing on the same URL at once move
//! one step, not two.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a list of registry URLs is refused (before any URL is parsed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error(
        "no registry URL given: give one (https://registry.example:7700) or several separated \
         by commas"
    )]
    Empty,
    #[error("registry URL {0:?} is listed twice; give each URL once")]
    Duplicate(String),
}

/// Splits `a,b,c` (also `a, b` and a trailing comma) into its URLs, trimmed, empties skipped;
/// refuses an empty list and a URL given twice.
pub fn split_list(raw: &str) -> Result<Vec<String>, ListError> {
    let mut out: Vec<String> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let norm = part.trim_end_matches('/');
        if out.iter().any(|o| o.trim_end_matches('/') == norm) {
            return Err(ListError::Duplicate(part.to_string()));
        }
        out.push(part.to_string());
    }
    if out.is_empty() {
        return Err(ListError::Empty);
    }
    Ok(out)
}

/// Joins URLs into the comma-separated form [`split_list`] reads.
pub fn join_list<S: AsRef<str>>(urls: &[S]) -> String {
    urls.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(",")
}

/// HTTP statuses that mean "this replica (or the load balancer in front of it) cannot serve
/// now", after which a client tries the next URL: 502 Bad Gateway, 503 Service Unavailable (also
/// the registry's own answer when its store is unavailable), 504 Gateway Timeout. Other statuses
/// are the registry's answer and would be the same from every replica.
pub fn is_failover_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// The URLs of one registry and the one in use (the first at start).
#[derive(Debug)]
pub struct Endpoints<T> {
    items: Vec<T>,
    current: AtomicUsize,
}

impl<T> Endpoints<T> {
    /// `None` for an empty list.
    pub fn new(items: Vec<T>) -> Option<Self> {
        (!items.is_empty()).then(|| Endpoints {
            items,
            current: AtomicUsize::new(0),
        })
    }

    /// Parses every entry of `raw` (see [`split_list`]) with `parse`; the first refusal is
    /// returned (the parser names the URL it refuses).
    pub fn parse<E>(
        raw: &str,
        list_error: impl FnOnce(ListError) -> E,
        mut parse: impl FnMut(&str) -> Result<T, E>,
    ) -> Result<Self, E> {
        let urls = split_list(raw).map_err(list_error)?;
        let items = urls
            .iter()
            .map(|u| parse(u))
            .collect::<Result<Vec<T>, E>>()?;
        // `split_list` never returns an empty list.
        Ok(Endpoints {
            items,
            current: AtomicUsize::new(0),
        })
    }

    /// How many URLs there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Never true (an empty list is refused); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every URL, in the configured order.
    pub fn all(&self) -> &[T] {
        &self.items
    }

    /// The index of the URL in use.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// The URL at `index` (taken modulo the length, so any index is valid).
    pub fn get(&self, index: usize) -> &T {
        &self.items[index % self.items.len()]
    }

    /// The index in use and its URL.
    pub fn pick(&self) -> (usize, &T) {
        let i = self.current();
        (i, self.get(i))
    }

    /// The order in which a one-shot command tries the URLs: the one in use first, then the
    /// others in list order, wrapping around.
    pub fn order(&self) -> Vec<usize> {
        let n = self.items.len();
        let start = self.current();
        (0..n).map(|k| (start + k) % n).collect()
    }

    /// The URL at `index` failed with a connection error: moves to the next one, unless
    /// another caller already moved away from `index`. Returns `Some((from, to))` when this
    /// call switched (with a single URL: never).
    pub fn failed(&self, index: usize) -> Option<(usize, usize)> {
        let n = self.items.len();
        if n < 2 {
            return None;
        }
        let next = (index + 1) % n;
        self.current
            .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|from| (from, next))
    }

    /// The URL at `index` answered: use it from now on. Returns the previous index when this
    /// changed the URL in use.
    pub fn worked(&self, index: usize) -> Option<usize> {
        let index = index % self.items.len();
        let prev = self.current.swap(index, Ordering::AcqRel);
        (prev != index).then_some(prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Endpoints<&'static str> {
        Endpoints::new(vec!["a", "b", "c"]).expect("not empty")
    }

    #[test]
    fn lists_are_split_trimmed_and_checked() {
        assert_eq!(split_list("http://a").unwrap(), vec!["http://a"]);
        assert_eq!(
            split_list(" http://a , http://b,").unwrap(),
            vec!["http://a", "http://b"]
        );
        assert_eq!(split_list(" , "), Err(ListError::Empty));
        assert_eq!(split_list(""), Err(ListError::Empty));
        assert_eq!(
            split_list("http://a,http://a/"),
            Err(ListError::Duplicate("http://a/".into()))
        );
        assert_eq!(join_list(&["http://a", "http://b"]), "http://a,http://b");
    }

    #[test]
    fn parse_names_the_refused_url() {
        let r = Endpoints::<u16>::parse(
            "1,x,3",
            |e| e.to_string(),
            |s| s.parse::<u16>().map_err(|_| format!("bad {s}")),
        );
        assert_eq!(r.unwrap_err(), "bad x");
        let ok = Endpoints::<u16>::parse(
            "1, 2",
            |e| e.to_string(),
            |s| s.parse::<u16>().map_err(|e| e.to_string()),
        )
        .unwrap();
        assert_eq!(ok.all(), &[1, 2]);
        let empty = Endpoints::<u16>::parse(",", |e| e.to_string(), |_| Ok(0));
        assert!(empty.unwrap_err().contains("no registry URL"));
        assert!(Endpoints::<u8>::new(vec![]).is_none());
    }

    #[test]
    fn a_failure_moves_to_the_next_and_wraps() {
        let e = three();
        assert_eq!(e.pick(), (0, &"a"));
        assert_eq!(e.failed(0), Some((0, 1)));
        assert_eq!(e.pick(), (1, &"b"));
        assert_eq!(e.failed(1), Some((1, 2)));
        assert_eq!(e.failed(2), Some((2, 0)));
        assert_eq!(e.pick(), (0, &"a"));
    }

    #[test]
    fn a_stale_failure_does_not_move_twice() {
        let e = three();
        // Two tasks were both using "a"; both see it fail.
        assert_eq!(e.failed(0), Some((0, 1)));
        assert_eq!(e.failed(0), None);
        assert_eq!(e.current(), 1);
    }

    #[test]
    fn a_single_url_never_switches() {
        let e = Endpoints::new(vec!["only"]).unwrap();
        assert_eq!(e.failed(0), None);
        assert_eq!(e.pick(), (0, &"only"));
        assert_eq!(e.order(), vec![0]);
    }

    #[test]
    fn the_one_that_works_is_remembered_and_tried_first() {
        let e = three();
        assert_eq!(e.order(), vec![0, 1, 2]);
        assert_eq!(e.worked(2), Some(0));
        assert_eq!(e.worked(2), None);
        assert_eq!(e.order(), vec![2, 0, 1]);
        assert_eq!(e.pick(), (2, &"c"));
    }

    #[test]
    fn only_gateway_failures_fail_over() {
        for s in [502, 503, 504] {
            assert!(is_failover_status(s), "{s}");
        }
        for s in [200, 304, 400, 401, 404, 409, 429, 500, 501, 505] {
            assert!(!is_failover_status(s), "{s}");
        }
    }
}
