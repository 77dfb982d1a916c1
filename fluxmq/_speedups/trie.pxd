# Topic filters -> values, matched against topic names with MQTT wildcards.

cdef class _Node:
    cdef dict children        # level -> _Node, created lazily
    cdef _Node plus           # the '+' child
    cdef _Node multi          # the '#' child
    cdef dict values          # key -> value of the filters that end here

cdef class TopicTrie:
    cdef _Node root
    cdef readonly Py_ssize_t count

    cpdef bint insert(self, str topic_filter, object key, object value) except -1
    cpdef object remove(self, str topic_filter, object key)
    cpdef object get(self, str topic_filter, object key)
    cpdef list match(self, str topic)
    cdef int match_into(self, str topic, list out) except -1
