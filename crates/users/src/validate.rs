//! Input rules of the contract. Each check returns the cleaned value or the
//! reason it is refused; callers collect every failing field so one answer lists
//! them all.

use clairon_http::FieldError;

pub(crate) const EMAIL_MAX: usize = 254;
pub(crate) const PASSWORD_MIN: usize = 8;
pub(crate) const PASSWORD_MAX: usize = 128;
pub(crate) const NAME_MAX: usize = 100;

/// An email as given (trimmed) and its lower-case form, the key duplicates are
/// detected on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Email {
    pub display: String,
    pub lower: String,
}

pub(crate) fn email(raw: &str) -> Result<Email, String> {
    let display = raw.trim();
    if display.is_empty() {
        return Err("is required".into());
    }
    let lower = display.to_lowercase();
    // Lower-casing may lengthen some characters; the stored key must fit too.
    if display.chars().count() > EMAIL_MAX || lower.chars().count() > EMAIL_MAX {
        return Err(format!("must be at most {EMAIL_MAX} characters"));
    }
    let looks_right = match display.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !local.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && !display.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if !looks_right {
        return Err("must look like local@domain".into());
    }
    Ok(Email {
        display: display.to_owned(),
        lower,
    })
}

pub(crate) fn password(raw: &str) -> Result<(), String> {
    let n = raw.chars().count();
    if n == 0 {
        return Err("is required".into());
    }
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(format!(
            "must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long"
        ));
    }
    Ok(())
}

pub(crate) fn name(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err("is required".into());
    }
    if v.chars().count() > NAME_MAX {
        return Err(format!("must be 1 to {NAME_MAX} characters long"));
    }
    if v.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(v.to_owned())
}

/// `+` and 7–15 digits. An empty value means "no phone number".
pub(crate) fn phone(raw: &str) -> Result<Option<String>, String> {
    let v = raw.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let ok = v
        .strip_prefix('+')
        .is_some_and(|d| (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(Some(v.to_owned()))
    } else {
        Err("must be + followed by 7 to 15 digits".into())
    }
}

/// Runs `check` on a field, recording its failure under `field`.
pub(crate) fn field<T>(
    errors: &mut Vec<FieldError>,
    field: &str,
    check: Result<T, String>,
) -> Option<T> {
    match check {
        Ok(v) => Some(v),
        Err(reason) => {
            errors.push(FieldError::new(field, reason));
            None
        }
    }
}

/// A required field that may be missing from the body.
pub(crate) fn required(value: Option<String>) -> Result<String, String> {
    value.ok_or_else(|| "is required".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            email("  Ann@Example.COM ").unwrap(),
            Email {
                display: "Ann@Example.COM".into(),
                lower: "ann@example.com".into()
            }
        );
        for bad in [
            "",
            "ann",
            "@x.org",
            "ann@",
            "a b@x.org",
            "a@b@c.org",
            "a@.org",
            "a@x..org",
            "a@x.org.",
        ] {
            assert!(email(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@x.org", "a".repeat(EMAIL_MAX - 6));
        assert!(email(&long).is_ok());
        assert!(email(&format!("a{long}")).is_err());
    }

    #[test]
    fn passwords_names_and_phones() {
        assert!(password("1234567").is_err());
        assert!(password("12345678").is_ok());
        assert!(password(&"é".repeat(128)).is_ok());
        assert!(password(&"x".repeat(129)).is_err());
        assert_eq!(name("  Ann ").unwrap(), "Ann");
        assert!(name("   ").is_err());
        assert!(name(&"n".repeat(101)).is_err());
        assert!(name("a\u{0}b").is_err());
        assert_eq!(phone("+3361234").unwrap().as_deref(), Some("+3361234"));
        assert_eq!(phone("").unwrap(), None);
        for bad in [
            "3361234567",
            "+123456",
            "+1234567890123456",
            "+33 612345",
            "+33-61234567",
        ] {
            assert!(phone(bad).is_err(), "{bad:?} accepted");
        }
    }
}
