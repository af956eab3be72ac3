//go:build race

package upstream

// Under -race every byte through go-smtp's dot writer and reader is
// instrumented (a 64 MiB message takes ~40 s), so the memory test streams
// less: still twice its heap budget.
const memoryTestBytes = 8 << 20
