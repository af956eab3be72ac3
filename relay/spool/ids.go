package spool

import (
	"container/heap"
	"sort"

	"github.com/o365relay/o365relay/relay/envelope"
)

// idHeap is a min-heap of IDs; IDs sort by the time they were made.
type idHeap []envelope.ID

func (h idHeap) Len() int           { return len(h) }
func (h idHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h idHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idHeap) Push(x any)        { *h = append(*h, x.(envelope.ID)) }
func (h *idHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (h *idHeap) push(id envelope.ID) { heap.Push(h, id) }
func (h idHeap) min() envelope.ID     { return h[0] }
func (h *idHeap) popMin()             { heap.Pop(h) }

func sortIDs(ids []envelope.ID) {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
}
