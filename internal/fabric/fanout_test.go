package fabric

import (
	"errors"
	"slices"
	"testing"
)

func TestFanOut(t *testing.T) {
	var got, failed []int
	FanOut([]int{1, 2, 3, 4}, func(k int) (func(), error) {
		if k%2 == 0 {
			return nil, DownError(k)
		}
		return func() { got = append(got, k) }, nil
	}, func(k int, err error) {
		if !errors.Is(err, ErrDown) {
			t.Errorf("oslet %d failed with %v, not its ErrDown", k, err)
		}
		failed = append(failed, k)
	})
	slices.Sort(got)
	slices.Sort(failed)
	if !slices.Equal(got, []int{1, 3}) || !slices.Equal(failed, []int{2, 4}) {
		t.Errorf("merged %v, failed %v; want [1 3], [2 4]", got, failed)
	}
	FanOut(nil, func(int) (func(), error) { t.Error("asked with no OSlets"); return nil, nil }, nil)
}
