package vproc

import (
	"os/user"
	"strconv"
	"sync"
)

var userNames sync.Map // uid -> name

// UserName names the owner of a process or an object as ps(1) and ipcs(1)
// do: the account's name, or the number where there is none. Names are
// remembered: listings ask for the same few uids again and again.
func UserName(uid uint32) string {
	if n, ok := userNames.Load(uid); ok {
		return n.(string)
	}
	name := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	userNames.Store(uid, name)
	return name
}
