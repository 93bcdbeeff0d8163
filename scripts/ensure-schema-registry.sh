#!/usr/bin/env bash
# Makes sure a real Schema Registry with the Confluent-compatible API can be started here, and
# prints the jar to run (`java -jar JAR`): Apicurio Registry, whose distribution (a Quarkus
# runner jar and its lib/) is fetched once from Maven Central with mvn, like the Kafka jars, and
# unpacked under $XDG_CACHE_HOME/cascade-connector. Its Confluent API is /apis/ccompat/v7;
# storage is in memory. tests/integration/test_schema_registry.py starts and stops it.
set -euo pipefail

version="2.6.13.Final"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cascade-connector"
home="$cache/apicurio-registry-$version"
jar="$home/apicurio-registry-app-$version-runner.jar"

if [ ! -f "$home/.complete" ]; then
    for tool in mvn java; do
        command -v "$tool" >/dev/null || { echo "ensure-schema-registry: $tool not found" >&2; exit 1; }
    done
    echo "ensure-schema-registry: fetching Apicurio Registry $version from Maven Central (once)" >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && mvn -q -B dependency:copy \
        "-Dartifact=io.apicurio:apicurio-registry-app:$version:tar.gz:all" \
        "-DoutputDirectory=$tmp") >&2
    mkdir -p "$tmp/unpacked"
    tar -xzf "$tmp/apicurio-registry-app-$version-all.tar.gz" -C "$tmp/unpacked"
    test -f "$tmp/unpacked/$(basename "$jar")"
    touch "$tmp/unpacked/.complete"
    rm -rf "$home"
    mkdir -p "$cache"
    mv "$tmp/unpacked" "$home"
fi
echo "$jar"
