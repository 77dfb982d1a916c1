# cython: language_level=3
"""A trie of topic filters, one level per node, with MQTT wildcard matching.

Values are stored under (filter, key): the dispatcher uses the client id as key, so a client's
second subscription to the same filter replaces the first. Matching follows MQTT: `+` matches
one level, `#` matches the rest including the parent level (`a/#` matches `a`), and topics
starting with `$` are not matched by a wildcard in the first level [MQTT-4.7.2-1].

The trie knows nothing of sessions or sharing; the dispatcher keeps the hot-topic cache.
"""


cdef class _Node:
    pass


cdef inline _Node _child(_Node node, str level, bint create):
    cdef _Node c
    if level == "+":
        if node.plus is None and create:
            node.plus = _Node()
        return node.plus
    if level == "#":
        if node.multi is None and create:
            node.multi = _Node()
        return node.multi
    if node.children is None:
        if not create:
            return None
        node.children = {}
    c = node.children.get(level)
    if c is None and create:
        c = _Node()
        node.children[level] = c
    return c


cdef inline bint _empty(_Node n):
    return (not n.values and not n.children and n.plus is None and n.multi is None)


cdef inline int _collect(_Node n, list out) except -1:
    if n.values:
        out.extend(n.values.values())
    return 0


cdef int _walk(_Node node, list levels, Py_ssize_t i, Py_ssize_t n, bint dollar, list out) except -1:
    cdef _Node c
    cdef bint wild = not (dollar and i == 0)
    if wild and node.multi is not None:
        _collect(node.multi, out)
    if i == n:
        _collect(node, out)
        return 0
    if node.children is not None:
        c = node.children.get(levels[i])
        if c is not None:
            _walk(c, levels, i + 1, n, dollar, out)
    if wild and node.plus is not None:
        _walk(node.plus, levels, i + 1, n, dollar, out)
    return 0


cdef class TopicTrie:
    """Topic filters -> {key: value}."""

    def __init__(self):
        self.root = _Node()
        self.count = 0

    cpdef bint insert(self, str topic_filter, object key, object value) except -1:
        """Store value under (filter, key); True if new, False if it replaced one."""
        cdef _Node node = self.root
        for level in topic_filter.split("/"):
            node = _child(node, level, True)
        if node.values is None:
            node.values = {}
        new = key not in node.values
        node.values[key] = value
        if new:
            self.count += 1
        return new

    cpdef object remove(self, str topic_filter, object key):
        """Remove (filter, key); returns the value removed, or None. Prunes empty nodes."""
        cdef list path = []
        cdef _Node node = self.root
        cdef _Node parent
        cdef list levels = topic_filter.split("/")
        cdef Py_ssize_t i
        for level in levels:
            path.append(node)
            node = _child(node, level, False)
            if node is None:
                return None
        if not node.values or key not in node.values:
            return None
        value = node.values.pop(key)
        self.count -= 1
        if not node.values:
            node.values = None
        # Prune the branch back up while nodes are empty.
        i = len(levels) - 1
        while i >= 0 and _empty(node):
            parent = <_Node>path[i]
            level = levels[i]
            if level == "+":
                parent.plus = None
            elif level == "#":
                parent.multi = None
            else:
                del parent.children[level]
                if not parent.children:
                    parent.children = None
            node = parent
            i -= 1
        return value

    cpdef object get(self, str topic_filter, object key):
        cdef _Node node = self.root
        for level in topic_filter.split("/"):
            node = _child(node, level, False)
            if node is None:
                return None
        if node.values is None:
            return None
        return node.values.get(key)

    cpdef list match(self, str topic):
        """Every value whose filter matches `topic` (a value appears once per filter)."""
        cdef list out = []
        self.match_into(topic, out)
        return out

    cdef int match_into(self, str topic, list out) except -1:
        cdef list levels = topic.split("/")
        return _walk(self.root, levels, 0, len(levels), topic.startswith("$"), out)

    def __len__(self):
        return self.count

    def filters(self):
        """Every (filter, key, value), for snapshots and the admin API."""
        out = []
        _items(self.root, [], out)
        return out


cdef int _items(_Node node, list prefix, list out) except -1:
    if node.values:
        f = "/".join(prefix)
        for k, v in node.values.items():
            out.append((f, k, v))
    if node.children:
        for level, c in node.children.items():
            _items(c, prefix + [level], out)
    if node.plus is not None:
        _items(node.plus, prefix + ["+"], out)
    if node.multi is not None:
        _items(node.multi, prefix + ["#"], out)
    return 0


def topic_matches(str topic_filter, str topic) -> bool:
    """Whether one filter matches one topic (same rules as the trie)."""
    cdef list f = topic_filter.split("/")
    cdef list t = topic.split("/")
    cdef Py_ssize_t i
    cdef Py_ssize_t nf = len(f)
    cdef Py_ssize_t nt = len(t)
    if topic.startswith("$") and (f[0] == "+" or f[0] == "#"):
        return False
    for i in range(nf):
        if f[i] == "#":
            return True
        if i >= nt:
            return False
        if f[i] != "+" and f[i] != t[i]:
            return False
    return nf == nt
