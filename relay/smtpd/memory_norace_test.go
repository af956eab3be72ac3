//go:build !race

package smtpd

const memoryTestBytes = 64 << 20
