#!/usr/bin/env bash
# Regenerates vectors.json with the openssl command line only (no code of this repository).
# Usage: bash test-vectors/media/generate.sh > test-vectors/media/vectors.json
# Needs: openssl 3, xxd, bash. See README.md for what each command computes.
set -euo pipefail

hex() { xxd -p | tr -d '\n'; }                       # stdin bytes -> lowercase hex
unhex() { xxd -r -p; }                                # lowercase hex -> stdout bytes
strip() { tr -d ':\n ' | tr 'A-F' 'a-f'; }            # openssl's AA:BB:.. -> aabb..

# Plaintext of n bytes: 00 01 02 .. ff 00 01 ..
plaintext() { local n=$1 i; for ((i = 0; i < n; i++)); do printf '%02x' $((i % 256)); done; }

vector() {
    local type=$1 info=$2 key=$3 len=$4
    local pt okm iv ck mk ct mac file_sha pt_sha
    pt=$(plaintext "$len")
    # 1. HKDF-SHA256, no salt, 80 bytes: IV(16) || cipher key(32) || MAC key(32)
    okm=$(openssl kdf -keylen 80 -kdfopt digest:SHA256 -kdfopt hexkey:"$key" \
        -kdfopt info:"$info" HKDF | strip)
    iv=${okm:0:32}; ck=${okm:32:64}; mk=${okm:96:64}
    # 2. AES-256-CBC with PKCS#7 padding (openssl enc's default)
    ct=$(printf '%s' "$pt" | unhex | openssl enc -aes-256-cbc -K "$ck" -iv "$iv" | hex)
    # 3. HMAC-SHA256(MAC key, IV || ciphertext), first 10 bytes
    mac=$(printf '%s%s' "$iv" "$ct" | unhex | openssl mac -digest SHA256 -macopt hexkey:"$mk" HMAC | strip)
    mac=${mac:0:20}
    # 4. SHA-256 of the encrypted file (ciphertext || MAC) and of the plaintext
    file_sha=$(printf '%s%s' "$ct" "$mac" | unhex | openssl dgst -sha256 -binary | hex)
    pt_sha=$(printf '%s' "$pt" | unhex | openssl dgst -sha256 -binary | hex)
    printf '    {"media_type": "%s", "info": "%s", "media_key": "%s", "plaintext": "%s",\n' \
        "$type" "$info" "$key" "$pt"
    printf '     "iv": "%s", "cipher_key": "%s", "mac_key": "%s",\n' "$iv" "$ck" "$mk"
    printf '     "ciphertext": "%s", "mac": "%s",\n' "$ct" "$mac"
    printf '     "encrypted_sha256": "%s", "plaintext_sha256": "%s"}' "$file_sha" "$pt_sha"
}

keys=(
    000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
    d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3
)
echo '{'
echo '  "source": "openssl 3 command line, test-vectors/media/generate.sh",'
echo '  "vectors": ['
first=1
for spec in "image:Interop Image Keys" "video:Interop Video Keys" \
    "audio:Interop Audio Keys" "document:Interop Document Keys"; do
    type=${spec%%:*}; info=${spec#*:}
    for key in "${keys[@]}"; do
        for len in 0 1 15 16 17 33 100; do
            [[ $first == 1 ]] || echo ','
            first=0
            vector "$type" "$info" "$key" "$len"
        done
    done
done
echo
echo '  ]'
echo '}'
