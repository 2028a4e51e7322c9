"""python-pkcs11 through the hahsm module: RSA and AES on a token by label.

Usage: ha_sign.py MODULE TOKEN_LABEL PIN OUT_DIR
Writes OUT_DIR/py-rsa.pub.der, OUT_DIR/py-rsa.sig and OUT_DIR/py-data.bin so
that plain openssl can check the signature.
"""
import os
import sys

import pkcs11
from pkcs11 import KeyType, Mechanism
from pkcs11.util.rsa import encode_rsa_public_key

module, label, pin, out = sys.argv[1:5]
lib = pkcs11.lib(module)
token = lib.get_token(token_label=label)
data = b"signed by python-pkcs11 through hahsm"
with token.open(user_pin=pin, rw=True) as session:
    public, private = session.generate_keypair(KeyType.RSA, 2048, label="py-rsa", store=True)
    signature = private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
    assert public.verify(data, signature, mechanism=Mechanism.SHA256_RSA_PKCS)
    aes = session.generate_key(KeyType.AES, 256, label="py-aes", store=True)
    iv = session.generate_random(128)
    plain = b"sixteen byte msg" * 4
    assert aes.decrypt(aes.encrypt(plain, mechanism_param=iv), mechanism_param=iv) == plain
    with open(os.path.join(out, "py-rsa.pub.der"), "wb") as f:
        f.write(encode_rsa_public_key(public))
with open(os.path.join(out, "py-rsa.sig"), "wb") as f:
    f.write(signature)
with open(os.path.join(out, "py-data.bin"), "wb") as f:
    f.write(data)
print("python-pkcs11 ok")
