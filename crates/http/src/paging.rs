//! Opaque cursors for keyset paging: `(time, id)` of the last item, base64url.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use crate::problem::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub time_ms: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.time_ms, self.id))
    }

    pub fn decode(s: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::invalid("cursor", "is not a cursor returned by this API");
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (t, id) = text.split_once('|').ok_or_else(bad)?;
        Ok(Cursor {
            time_ms: t.parse().map_err(|_| bad())?,
            id: id.to_owned(),
        })
    }
}

/// Decodes an optional `cursor` query parameter; an empty one (`?cursor=`, as
/// a form with a blank field sends) means the first page.
pub fn cursor(param: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    param
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(Cursor::decode)
        .transpose()
}

/// One page of a keyset-paged list.
#[derive(Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The cursor of the last item, when another page may follow.
    pub next_cursor: Option<String>,
}

/// Pages rows fetched with `LIMIT limit + 1`: the extra row only tells that
/// another page follows and is dropped, so the last page has no cursor.
pub fn page<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    let next_cursor = more.then(|| rows.last().map(|r| key(r).encode())).flatten();
    Page {
        items: rows,
        next_cursor,
    }
}

/// Clamps a requested page size.
pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_a_4xx() {
        let c = Cursor {
            time_ms: 42,
            id: "abc|def".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert_eq!(Cursor::decode("%%%").unwrap_err().status().as_u16(), 422);
    }

    #[test]
    fn an_absent_or_blank_cursor_is_none_and_a_bad_one_names_the_field() {
        assert_eq!(cursor(None).unwrap(), None);
        assert_eq!(cursor(Some("")).unwrap(), None);
        assert_eq!(cursor(Some("  ")).unwrap(), None);
        let c = Cursor {
            time_ms: 7,
            id: "x".into(),
        };
        assert_eq!(cursor(Some(&c.encode())).unwrap(), Some(c));
        match cursor(Some("not-a-cursor")) {
            Err(ApiError::Invalid(errors)) => assert_eq!(errors[0].field, "cursor"),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    fn key(n: &i64) -> Cursor {
        Cursor {
            time_ms: *n,
            id: format!("id{n}"),
        }
    }

    fn next(n: i64) -> Option<String> {
        Some(key(&n).encode())
    }

    #[test]
    fn a_probe_row_means_a_next_page_and_is_dropped() {
        let p = page(vec![5, 4, 3], 2, key);
        assert_eq!(p.items, vec![5, 4]);
        assert_eq!(p.next_cursor, next(4));
    }

    #[test]
    fn without_a_probe_row_the_page_is_the_last() {
        let exactly = page(vec![5, 4], 2, key);
        assert_eq!(exactly.items, vec![5, 4]);
        assert_eq!(exactly.next_cursor, None);
        assert_eq!(page(vec![5], 2, key).next_cursor, None);
        assert_eq!(
            page(Vec::new(), 2, key),
            Page {
                items: Vec::new(),
                next_cursor: None
            }
        );
    }

    #[test]
    fn pages_of_a_list_cover_it_exactly_once() {
        let all: Vec<i64> = (0..7).rev().collect();
        for limit in 1..=8 {
            let (mut seen, mut after) = (Vec::<i64>::new(), None::<i64>);
            loop {
                let rest = all.iter().filter(|n| after.is_none_or(|a| **n < a));
                let p = page(rest.take(limit as usize + 1).copied().collect(), limit, key);
                seen.extend(&p.items);
                match p.next_cursor {
                    Some(c) => after = Some(Cursor::decode(&c).unwrap().time_ms),
                    None => break,
                }
            }
            assert_eq!(seen, all, "limit {limit}");
        }
    }
}
