#!/usr/bin/env python3
"""Generates e2ee.json: libsodium (via PyNaCl 1.6.2) known answers for crypto_kx and
crypto_secretstream_xchacha20poly1305. Run once: `pip install pynacl==1.6.2 && python3 gen_e2ee.py`.
Stream headers are random (libsodium chooses them); the file records them."""
import json
import os

import nacl
from nacl import bindings as b

assert nacl.__version__ == "1.6.2", nacl.__version__


def kx_case(client_seed, server_seed):
    cpk, csk = b.crypto_kx_seed_keypair(client_seed)
    spk, ssk = b.crypto_kx_seed_keypair(server_seed)
    crx, ctx = b.crypto_kx_client_session_keys(cpk, csk, spk)
    srx, stx = b.crypto_kx_server_session_keys(spk, ssk, cpk)
    return {
        "client_seed": client_seed.hex(), "client_sk": csk.hex(), "client_pk": cpk.hex(),
        "server_seed": server_seed.hex(), "server_sk": ssk.hex(), "server_pk": spk.hex(),
        "client_rx": crx.hex(), "client_tx": ctx.hex(),
        "server_rx": srx.hex(), "server_tx": stx.hex(),
    }


def plain(n, salt):
    return bytes((i * 7 + n + salt) & 0xFF for i in range(n))


def stream_case(name, key, salt):
    state = b.crypto_secretstream_xchacha20poly1305_state()
    header = b.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    msgs = []
    plan = [(n, b.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE) for n in (0, 1, 5, 16, 17, 100, 1280)]
    plan += [(33, b.crypto_secretstream_xchacha20poly1305_TAG_PUSH),
             (8, b.crypto_secretstream_xchacha20poly1305_TAG_REKEY),
             (64, b.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE),
             (3, b.crypto_secretstream_xchacha20poly1305_TAG_FINAL)]
    for n, tag in plan:
        p = plain(n, salt)
        c = b.crypto_secretstream_xchacha20poly1305_push(state, p, None, tag)
        assert len(c) == n + 17
        msgs.append({"tag": tag, "plain": p.hex(), "cipher": c.hex()})
    # self-check with libsodium pull
    pstate = b.crypto_secretstream_xchacha20poly1305_state()
    b.crypto_secretstream_xchacha20poly1305_init_pull(pstate, header, key)
    for m in msgs:
        p, tag = b.crypto_secretstream_xchacha20poly1305_pull(pstate, bytes.fromhex(m["cipher"]), None)
        assert p.hex() == m["plain"] and tag == m["tag"]
    return {"name": name, "key": key.hex(), "header": header.hex(), "messages": msgs}


seed_c = bytes(range(32))
seed_s = bytes([1]) + bytes(range(1, 32))
kx = [kx_case(seed_c, seed_s), kx_case(os.urandom(32), os.urandom(32))]
streams = [
    stream_case("client_to_server", bytes.fromhex(kx[0]["client_tx"]), 0),
    stream_case("server_to_client", bytes.fromhex(kx[0]["server_tx"]), 1),
]
out = {"generator": "PyNaCl 1.6.2 (libsodium), gen_e2ee.py", "kx": kx, "secretstream": streams}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2ee.json"), "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("ok")
