package fabric

import "sync"

// FanOut asks every OSlet of ks at once and returns when all have
// answered: the host's smpc ps and status, and an init that gathers the
// whole cluster's, both ask this way. ask makes the call to OSlet k and
// returns the step that folds its answer in; FanOut runs those steps one at
// a time, so that they may append to one reply, and, for an OSlet whose
// call failed, runs failed(k, err) instead, also one at a time.
func FanOut(ks []int, ask func(k int) (merge func(), err error), failed func(k int, err error)) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, k := range ks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			merge, err := ask(k)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed(k, err)
				return
			}
			merge()
		}()
	}
	wg.Wait()
}
