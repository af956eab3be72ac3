//go:build !race

package upstream

const memoryTestBytes = 64 << 20
