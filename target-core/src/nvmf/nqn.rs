//! NVMe Qualified Name checks (Base 2.0c §4.5).

/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";
/// Longest NQN in bytes.
pub const MAX_NQN_LEN: usize = 223;

/// Checks an NQN; the error says what is wrong in words a user can act on.
pub fn validate(nqn: &str) -> Result<(), String> {
    if nqn.len() > MAX_NQN_LEN {
        return Err(format!(
            "NQN is {} bytes, the limit is {MAX_NQN_LEN}",
            nqn.len()
        ));
    }
    if nqn == DISCOVERY_NQN {
        return Ok(());
    }
    if let Some(uuid) = nqn.strip_prefix(UUID_PREFIX) {
        let ok = uuid.len() == 36
            && uuid.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        return if ok {
            Ok(())
        } else {
            Err(format!("'{uuid}' after '{UUID_PREFIX}' is not a UUID"))
        };
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return Err("NQN must start with 'nqn.'".into());
    };
    let date = rest.get(..7).unwrap_or("");
    let b = date.as_bytes();
    let date_ok = b.len() == 7
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..].iter().all(u8::is_ascii_digit)
        && matches!(
            &date[5..],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        );
    if !date_ok {
        return Err("NQN must continue 'nqn.yyyy-mm.' with a valid year and month".into());
    }
    let rest = &rest[7..];
    let Some(rest) = rest.strip_prefix('.') else {
        return Err("NQN needs '.' after the date, then a reverse domain name".into());
    };
    let domain = rest.split(':').next().unwrap_or("");
    if domain.is_empty()
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err("NQN needs a reverse domain name after the date (e.g. 'com.example')".into());
    }
    if !domain
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "reverse domain '{domain}' has characters other than letters, digits, '-' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_forms() {
        validate("nqn.2026-11.io.nvmf-rs:sub0").unwrap();
        validate("nqn.2014-08.com.example").unwrap();
        validate("nqn.2014-08.org.nvmexpress:uuid:12345678-1234-1234-1234-123456789abc").unwrap();
        validate(DISCOVERY_NQN).unwrap();
    }

    #[test]
    fn rejects_with_a_reason() {
        assert!(
            validate("iqn.2026-11.io.x:a")
                .unwrap_err()
                .contains("start with")
        );
        assert!(
            validate("nqn.2026-13.io.x:a")
                .unwrap_err()
                .contains("month")
        );
        assert!(validate("nqn.2026-11:a").unwrap_err().contains("'.'"));
        assert!(
            validate("nqn.2026-11.:a")
                .unwrap_err()
                .contains("reverse domain")
        );
        assert!(
            validate("nqn.2014-08.org.nvmexpress:uuid:xyz")
                .unwrap_err()
                .contains("UUID")
        );
        assert!(
            validate(&format!("nqn.2026-11.io.x:{}", "a".repeat(220)))
                .unwrap_err()
                .contains("limit")
        );
    }
}
