package token

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"hash"
)

// Encrypted PKCS #8 ("ENCRYPTED PRIVATE KEY", RFC 5958 §3) with PBES2
// (RFC 8018 §6.2): what `openssl pkcs8 -topk8 -v2 aes-256-cbc` and
// `openssl genpkey -aes256` write. The standard library has no decoder for
// it (x509 only has the legacy, insecure DEK-Info form), MSAL's CertFromPEM
// ignores these blocks (docs/entra.md#credentials), so this is the small subset
// real tools produce: PBKDF2 (RFC 8018 §5.2) with HMAC-SHA1 or HMAC-SHA256,
// and AES-128/192/256-CBC (RFC 8018 §B.2.5 lists the AES-CBC-Pad schemes).

var (
	oidPBES2      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidHMACSHA1   = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACSHA256 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

// maxPBKDF2Iterations bounds the work a hostile file can ask for. OpenSSL
// writes 2048 by default, PKCS #12 exports from Windows and Key Vault a few
// thousand; 10 million is already several seconds of CPU.
const maxPBKDF2Iterations = 10_000_000

// errWrongPassword is what a failed decryption means in practice: CBC padding
// or the decrypted ASN.1 do not check out.
var errWrongPassword = errors.New("wrong password (decryption failed)")

type encryptedPrivateKeyInfo struct {
	Algo          pkix.AlgorithmIdentifier
	EncryptedData []byte
}

type pbes2Params struct {
	KeyDerivationFunc pkix.AlgorithmIdentifier
	EncryptionScheme  pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt      []byte
	Iteration int
	KeyLength int                      `asn1:"optional"`
	PRF       pkix.AlgorithmIdentifier `asn1:"optional"`
}

// decryptPKCS8 returns the PKCS #8 PrivateKeyInfo DER inside an
// EncryptedPrivateKeyInfo. maxIter bounds PBKDF2 iterations (the fuzz target
// passes a small bound). Errors never contain key material or the password.
func decryptPKCS8(der []byte, password []byte, maxIter int) ([]byte, error) {
	c, err := parsePBES2(der, maxIter)
	if err != nil {
		return nil, err
	}
	key, err := pbkdf2.Key(c.prf, string(password), c.salt, c.iter, c.keyLen)
	if err != nil {
		return nil, fmt.Errorf("PBKDF2: %v", err)
	}
	return decryptAESCBC(key, c.iv, c.ct)
}

// pbes2Cipher is what an EncryptedPrivateKeyInfo asks for: how to derive
// the key (PBKDF2) and what to decrypt with it (AES-CBC).
type pbes2Cipher struct {
	prf    func() hash.Hash
	salt   []byte
	iter   int
	keyLen int
	iv     []byte
	ct     []byte
}

// parsePBES2 is decryptPKCS8's parsing, split out to keep it short: it
// checks every parameter before any key is derived, so a file we cannot
// read costs no PBKDF2 work.
func parsePBES2(der []byte, maxIter int) (*pbes2Cipher, error) {
	var info encryptedPrivateKeyInfo
	rest, err := asn1.Unmarshal(der, &info)
	if err != nil {
		return nil, fmt.Errorf("malformed encrypted PKCS #8: %v", err)
	}
	if len(rest) != 0 {
		return nil, errors.New("malformed encrypted PKCS #8: trailing data")
	}
	if !info.Algo.Algorithm.Equal(oidPBES2) {
		return nil, fmt.Errorf("encrypted PKCS #8 uses %v; only PBES2 is supported (re-encrypt with `openssl pkcs8 -topk8 -v2 aes-256-cbc`)", info.Algo.Algorithm)
	}
	var p pbes2Params
	if rest, err := asn1.Unmarshal(info.Algo.Parameters.FullBytes, &p); err != nil || len(rest) != 0 {
		return nil, errors.New("malformed PBES2 parameters")
	}
	if !p.KeyDerivationFunc.Algorithm.Equal(oidPBKDF2) {
		return nil, fmt.Errorf("PBES2 key derivation %v not supported; only PBKDF2", p.KeyDerivationFunc.Algorithm)
	}
	var kdf pbkdf2Params
	if rest, err := asn1.Unmarshal(p.KeyDerivationFunc.Parameters.FullBytes, &kdf); err != nil || len(rest) != 0 {
		return nil, errors.New("malformed PBKDF2 parameters")
	}
	if kdf.Iteration < 1 || kdf.Iteration > maxIter {
		return nil, fmt.Errorf("PBKDF2 iteration count %d out of range 1..%d", kdf.Iteration, maxIter)
	}
	prf, err := pbkdf2PRF(kdf.PRF.Algorithm)
	if err != nil {
		return nil, err
	}
	keyLen, err := aesCBCKeyLen(p.EncryptionScheme.Algorithm)
	if err != nil {
		return nil, err
	}
	if kdf.KeyLength != 0 && kdf.KeyLength != keyLen {
		return nil, errors.New("PBKDF2 key length does not match the cipher")
	}
	var iv []byte
	if rest, err := asn1.Unmarshal(p.EncryptionScheme.Parameters.FullBytes, &iv); err != nil || len(rest) != 0 || len(iv) != aes.BlockSize {
		return nil, errors.New("malformed AES-CBC IV")
	}
	ct := info.EncryptedData
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, errors.New("encrypted key length is not a multiple of the AES block size")
	}
	return &pbes2Cipher{prf: prf, salt: kdf.Salt, iter: kdf.Iteration, keyLen: keyLen, iv: iv, ct: ct}, nil
}

// pbkdf2PRF is the hash of PBKDF2's HMAC named by alg (empty: the default).
func pbkdf2PRF(alg asn1.ObjectIdentifier) (func() hash.Hash, error) {
	switch {
	case len(alg) == 0 || alg.Equal(oidHMACSHA1):
		return sha1.New, nil // RFC 8018 §A.2: the default PRF is hmacWithSHA1
	case alg.Equal(oidHMACSHA256):
		return sha256.New, nil
	}
	return nil, fmt.Errorf("PBKDF2 PRF %v not supported; only HMAC-SHA1 and HMAC-SHA256", alg)
}

// aesCBCKeyLen is the key length of the AES-CBC scheme named by enc.
func aesCBCKeyLen(enc asn1.ObjectIdentifier) (int, error) {
	switch {
	case enc.Equal(oidAES128CBC):
		return 16, nil
	case enc.Equal(oidAES192CBC):
		return 24, nil
	case enc.Equal(oidAES256CBC):
		return 32, nil
	}
	return 0, fmt.Errorf("PBES2 cipher %v not supported; only AES-CBC", enc)
}

// decryptAESCBC is decryptPKCS8's decryption, split out to keep it short:
// AES-CBC, then the padding and DER checks that tell a wrong password.
func decryptAESCBC(key, iv, ct []byte) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("AES: %v", err)
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	// PKCS #7 padding (RFC 8018 §6.1.1 step 4).
	n := int(pt[len(pt)-1])
	if n == 0 || n > aes.BlockSize {
		return nil, errWrongPassword
	}
	for _, b := range pt[len(pt)-n:] {
		if int(b) != n {
			return nil, errWrongPassword
		}
	}
	pt = pt[:len(pt)-n]
	// A wrong password passes the padding check 1 time in 256; the
	// plaintext must then still be one DER SEQUENCE.
	var raw asn1.RawValue
	if rest, err := asn1.Unmarshal(pt, &raw); err != nil || len(rest) != 0 || raw.Tag != asn1.TagSequence {
		return nil, errWrongPassword
	}
	return pt, nil
}
