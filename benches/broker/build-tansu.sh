#!/usr/bin/env bash
# Builds the broker the pipeline benchmark runs against: tansu 0.6.0, the Kafka-protocol broker
# the tests use, from its crates.io sources, with one fix to its memory storage
# (tansu-storage-fetch.patch). Stock 0.6.0 answers a fetch that starts inside a record batch
# with the *next* batch, skipping the rest of the current one; Kafka answers with the batch
# that holds the offset. The service refetches from inside a batch whenever it resumes paused
# partitions, so against the stock broker a backlog produced in batches would lose messages.
#
#   benches/broker/build-tansu.sh [DIR]     # DIR defaults to target/bench-broker
#
# Builds once (about 10 minutes on 2 cores) and prints the binary's path as its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/bench-broker}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/bin/tansu
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

version=0.6.0
cargo_home=${CARGO_HOME:-$HOME/.cargo}
crate() { ls "$cargo_home"/registry/cache/*/"$1-$version.crate" 2>/dev/null | head -n 1; }

if [ -z "$(crate tansu)" ] || [ -z "$(crate tansu-storage)" ]; then
    # Download only: a throwaway package depending on both brings them into cargo's cache.
    fetch=$out/fetch
    mkdir -p "$fetch/src"
    : > "$fetch/src/lib.rs"
    cat > "$fetch/Cargo.toml" <<TOML
[package]
name = "fetch-tansu"
version = "0.0.0"
edition = "2021"

[dependencies]
tansu = { version = "=$version", default-features = false }
tansu-storage = { version = "=$version", default-features = false }
TOML
    cargo fetch --manifest-path "$fetch/Cargo.toml" >&2
fi

src=$out/src
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$(crate tansu)" -C "$src"
tar -xzf "$(crate tansu-storage)" -C "$src"
patch -d "$src/tansu-storage-$version" -p1 < "$here/tansu-storage-fetch.patch" >&2
printf '\n[patch.crates-io]\ntansu-storage = { path = "../tansu-storage-%s" }\n' "$version" \
    >> "$src/tansu-$version/Cargo.toml"
# tansu's own Cargo.lock pins every other dependency, as `cargo install --locked` would.
echo "building tansu $version with the fetch fix into $out (once; about 10 minutes)" >&2
cargo build --release --features dynostore \
    --manifest-path "$src/tansu-$version/Cargo.toml" --target-dir "$out/build" >&2
mkdir -p "$out/bin"
cp "$out/build/release/tansu" "$bin"
echo "$bin"
