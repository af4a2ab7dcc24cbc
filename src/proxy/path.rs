//! The request path: which service it names, and whether what is forwarded stays under it.

/// Splits `/stripe/v1/charges` into `("stripe", "/v1/charges")`; `/stripe` gives `"/"`.
pub(super) fn split_service(path: &str) -> (&str, &str) {
    let rest = path.strip_prefix('/').unwrap_or(path);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// Refuses a path that could reach anything but the upstream's own path under this service:
/// a `.` or `..` segment, plain or percent-encoded (once or twice), with or without `;`
/// parameters (`..;`, which some servers read as `..`), an empty segment (`//`, which some
/// read as a host), an encoded `/` or `\`, a backslash, or a control character. The message
/// names the segment.
pub(super) fn check(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with /"));
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && i + 1 < segments.len() {
            return Err(format!("path {path:?} has an empty segment (//)"));
        }
        let once = decode(segment);
        let twice = decode(&once);
        for form in [*segment, once.as_str(), twice.as_str()] {
            let bare = form.split(';').next().unwrap_or(form);
            if bare == "." || bare == ".." {
                return Err(format!("path segment {segment:?} would leave the service's prefix"));
            }
            if form.contains('/') || form.contains('\\') {
                return Err(format!("path segment {segment:?} holds an encoded / or \\"));
            }
            if form.chars().any(|c| c.is_control()) {
                return Err(format!("path segment {segment:?} holds a control character"));
            }
        }
    }
    Ok(())
}

/// The path as routes are matched against: unreserved characters' escapes decoded (`%63` is
/// `c`), `;` parameters dropped, and no trailing `/`, so `/v1/%63ustomers/` matches the route
/// `/v1/customers`. (The upstream gets the path as sent.)
pub(super) fn normalized(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').skip(1) {
        let bare = segment.split(';').next().unwrap_or(segment);
        out.push('/');
        let b = bare.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
            {
                let c = h << 4 | l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i] as char);
            i += 1;
        }
    }
    while out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Percent-decoding, leaving a malformed escape as it is.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_first_segment() {
        assert_eq!(split_service("/stripe/v1/charges"), ("stripe", "/v1/charges"));
        assert_eq!(split_service("/stripe"), ("stripe", "/"));
        assert_eq!(split_service("/stripe/"), ("stripe", "/"));
        assert_eq!(split_service("/"), ("", "/"));
    }

    #[test]
    fn escapes_are_refused_in_every_form() {
        for bad in [
            "/../calcom",
            "/v1/..",
            "/%2e%2e/calcom",
            "/%2E%2e/calcom",
            "/.%2e/calcom",
            "/%252e%252e/calcom",
            "/v1%2f..%2fcalcom",
            "/v1%5c..",
            "/a\\b",
            "/a%00b",
            "/a%0d%0aX-Injected:%201",
            "/.",
            "/..;/admin",
            "/%2e%2e%3b/admin",
            "/v1//evil.example/x",
        ] {
            assert!(check(bad).is_err(), "{bad} let through");
        }
        for good in [
            "/",
            "/v1/charges",
            "/v1/customers/cus_1",
            "/a%20b",
            "/...",
            "/v1/a.b",
            "/%41",
        ] {
            assert_eq!(check(good), Ok(()), "{good} refused");
        }
    }
}
