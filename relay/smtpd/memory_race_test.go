//go:build race

package smtpd

// Under -race every byte through go-smtp's dot reader and the line-ending
// checker is instrumented, so the memory test streams less: still twice its
// heap budget.
const memoryTestBytes = 6 << 20

// perMessageAllocBudget (TestIntakeAllocationsPerMessage): under -race a
// sync.Pool drops a quarter of what is put back, so a pooled 32 KiB buffer
// is allocated again for one message in four on average.
const perMessageAllocBudget = 24 << 10
