//go:build !race

package smtpd

const memoryTestBytes = 64 << 20

// perMessageAllocBudget is TestIntakeAllocationsPerMessage's bound.
const perMessageAllocBudget = 12 << 10
