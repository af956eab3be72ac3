package config

import (
	"fmt"
	"strings"
)

// Suggestions for typos in setting names: the closest known name by edit
// distance, offered in the error so a misspelt key or variable is fixed at once.

func suggest(name string, candidates []string) string {
	best, bestD := "", 4
	for _, c := range candidates {
		if d := distance(strings.ToLower(name), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %s?", best)
}

// distance is the Levenshtein distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func envNames() []string {
	var n []string
	for _, s := range Settings() {
		n = append(n, s.Env)
	}
	return n
}

func keyNames() []string {
	var n []string
	for _, s := range Settings() {
		n = append(n, s.Key)
	}
	return n
}
