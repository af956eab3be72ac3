//go:build race

package smtpd

// Under -race every byte through go-smtp's dot reader and the line-ending
// checker is instrumented, so the memory test streams less: still twice its
// heap budget.
const memoryTestBytes = 6 << 20
