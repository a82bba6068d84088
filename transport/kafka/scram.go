package kafka

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"

	"github.com/segmentio/kafka-go/sasl"
)

// A SCRAM client (RFC 5802, RFC 7677) on the standard library, so the
// transport needs no SCRAM module beyond kafka-go itself.

type scramAlgo struct {
	name string
	h    func() hash.Hash
}

var (
	scramSHA256 = scramAlgo{"SCRAM-SHA-256", sha256.New}
	scramSHA512 = scramAlgo{"SCRAM-SHA-512", sha512.New}
)

type scramMechanism struct {
	algo      scramAlgo
	user, pwd string
}

func newSCRAM(a scramAlgo, user, pwd string) sasl.Mechanism {
	return scramMechanism{algo: a, user: user, pwd: pwd}
}

func (m scramMechanism) Name() string { return m.algo.name }

func (m scramMechanism) Start(context.Context) (sasl.StateMachine, []byte, error) {
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, nil, err
	}
	s := &scramSession{m: m, nonce: base64.RawStdEncoding.EncodeToString(raw[:])}
	name := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(m.user)
	s.clientFirstBare = "n=" + name + ",r=" + s.nonce
	return s, []byte("n,," + s.clientFirstBare), nil
}

type scramSession struct {
	m               scramMechanism
	nonce           string
	clientFirstBare string
	serverSignature []byte
	step            int
}

var errSCRAM = errors.New("kafka: SCRAM exchange failed")

func (s *scramSession) Next(_ context.Context, challenge []byte) (bool, []byte, error) {
	s.step++
	switch s.step {
	case 1:
		return s.final(string(challenge))
	case 2:
		attrs := scramAttrs(string(challenge))
		if e, ok := attrs["e"]; ok {
			return false, nil, fmt.Errorf("%w: server error %q", errSCRAM, e)
		}
		v, err := base64.StdEncoding.DecodeString(attrs["v"])
		if err != nil || subtle.ConstantTimeCompare(v, s.serverSignature) != 1 {
			return false, nil, fmt.Errorf("%w: server signature does not verify", errSCRAM)
		}
		return true, nil, nil
	}
	return false, nil, fmt.Errorf("%w: unexpected challenge", errSCRAM)
}

func (s *scramSession) final(serverFirst string) (bool, []byte, error) {
	attrs := scramAttrs(serverFirst)
	if e, ok := attrs["e"]; ok {
		return false, nil, fmt.Errorf("%w: server error %q", errSCRAM, e)
	}
	nonce := attrs["r"]
	if !strings.HasPrefix(nonce, s.nonce) || len(nonce) == len(s.nonce) {
		return false, nil, fmt.Errorf("%w: server nonce does not extend ours", errSCRAM)
	}
	salt, err := base64.StdEncoding.DecodeString(attrs["s"])
	if err != nil || len(salt) == 0 {
		return false, nil, fmt.Errorf("%w: bad salt", errSCRAM)
	}
	iter, err := strconv.Atoi(attrs["i"])
	if err != nil || iter < 1 {
		return false, nil, fmt.Errorf("%w: bad iteration count %q", errSCRAM, attrs["i"])
	}
	h := s.m.algo.h
	salted, err := pbkdf2.Key(h, s.m.pwd, salt, iter, h().Size())
	if err != nil {
		return false, nil, fmt.Errorf("%w: %v", errSCRAM, err)
	}
	mac := func(key []byte, msg string) []byte {
		m := hmac.New(h, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	sum := h()
	sum.Write(clientKey)
	storedKey := sum.Sum(nil)
	withoutProof := "c=biws,r=" + nonce // biws = base64("n,,")
	authMsg := s.clientFirstBare + "," + serverFirst + "," + withoutProof
	sig := mac(storedKey, authMsg)
	proof := make([]byte, len(clientKey))
	for i := range clientKey {
		proof[i] = clientKey[i] ^ sig[i]
	}
	s.serverSignature = mac(mac(salted, "Server Key"), authMsg)
	return false, []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

func scramAttrs(s string) map[string]string {
	m := make(map[string]string)
	for _, kv := range strings.Split(s, ",") {
		if len(kv) >= 2 && kv[1] == '=' {
			m[kv[:1]] = kv[2:]
		}
	}
	return m
}
