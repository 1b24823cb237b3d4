//! Secrets the server makes (worker tokens, lease keys) and the hash the store keeps of them.

/// `bytes` random bytes from the operating system (`getrandom`) as lower-case hex: secrets
/// such as worker tokens and lease keys.
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the store keeps of a lease secret (blake3, hex).
pub fn lease_key_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_is_fresh_and_the_asked_length() {
        let (a, b) = (random_hex(16).unwrap(), random_hex(16).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
