# `make test` is the one command that runs every check CI runs (.ci/run calls it).
.PHONY: test tools crdgen

tools:
	bash scripts/install-test-tools.sh

crdgen:
	cargo run --bin crdgen

test: tools
	cargo fmt --all -- --check
	cargo clippy --all-targets --all-features -- -D warnings
	cargo test --features test-support --lib --bins --tests
