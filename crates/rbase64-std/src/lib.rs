//! `rbase64::encode`, the one function of rbase64 that rabbitmq_http_client calls (for the
//! password hashes it sends RabbitMQ), on the `base64` crate.
//!
//! rbase64 2.0 makes mimalloc the process's global allocator from inside the library, which the
//! binary that links it cannot undo: rabbitmq-broker ran on mimalloc, which keeps memory per
//! thread (30 MiB anonymous after its first `/ready`, against 3 MiB for the other brokers on
//! the system allocator). The workspace puts this crate in its place (`[patch.crates-io]`).

/// Standard base64 (RFC 4648, with padding), as rbase64 writes it.
pub fn encode(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    /// RFC 4648's test vectors, and the two characters past `z` and `9`.
    #[test]
    fn encodes_as_rfc_4648_with_padding() {
        for (input, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::encode(input.as_bytes()), encoded);
        }
        assert_eq!(super::encode(&[0xfb, 0xff]), "+/8=");
    }

    /// Cargo only warns when a patch no longer matches what the graph asks for (say
    /// rabbitmq_http_client moves to rbase64 3), and the registry's rbase64 would bring mimalloc
    /// back unseen.
    #[test]
    fn the_patch_is_in_use_and_mimalloc_out_of_the_build() {
        let lock = include_str!("../../../Cargo.lock");
        assert!(!lock.contains("[[patch.unused]]"), "a patch is unused");
        assert!(
            !lock.contains("name = \"mimalloc\""),
            "mimalloc is in the build"
        );
        let rbase64 = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"rbase64\""))
            .expect("rbase64 is in the build");
        assert!(
            !rbase64.contains("source ="),
            "rbase64 comes from a registry"
        );
    }
}
