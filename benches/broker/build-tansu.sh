#!/usr/bin/env bash
# Builds the broker the pipeline benchmark runs against: tansu 0.6.0, the Kafka-protocol broker
# the tests use, from its crates.io sources, with three fixes to how it answers a fetch
# (tansu-storage-fetch.patch), each as Kafka answers:
#
# - A fetch that starts inside a record batch gets that batch. Stock 0.6.0's memory storage
#   answers with the *next* batch, skipping the rest of the current one. The service refetches
#   from inside a batch whenever it resumes paused partitions, so against the stock broker a
#   backlog produced in batches would lose messages.
# - Each partition gives at most its `partition_max_bytes` (librdkafka's
#   `max.partition.fetch.bytes`, 1 MiB) beyond the first batch. Stock 0.6.0 fills the whole
#   response from the first partition of the request that has records, so a consumer of a
#   backlog gets one partition's records for seconds at a time, then the next one's: the
#   writers owning the other partitions sit idle.
# - A fetch goes on after the last batch it took. Stock 0.6.0 counts the records taken from
#   the fetch offset, which with the first fix may lie inside the first batch: it then read on
#   from too far, and a consumer at the head of a growing partition could miss a whole
#   batch (seen as 19 metrics lost in a latency run).
#
#   benches/broker/build-tansu.sh [DIR]     # DIR defaults to target/bench-broker
#
# Builds once (about 10 minutes on 2 cores), again when the patch changes, and prints the
# binary's path as its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/bench-broker}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/bin/tansu
# The patch the binary was built with.
stamp=$out/bin/tansu-storage-fetch.patch
if [ -x "$bin" ] && cmp -s "$stamp" "$here/tansu-storage-fetch.patch"; then
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
echo "building tansu $version with the fetch fixes into $out (about 10 minutes the first time)" >&2
cargo build --release --features dynostore \
    --manifest-path "$src/tansu-$version/Cargo.toml" --target-dir "$out/build" >&2
mkdir -p "$out/bin"
cp "$out/build/release/tansu" "$bin"
cp "$here/tansu-storage-fetch.patch" "$stamp"
echo "$bin"
