# Durable storage's records (see records.pyx).

from fluxmq._speedups.bufpool cimport WriteBuffer
from fluxmq._speedups.message cimport Message
from fluxmq._speedups.session cimport Inflight

cdef int write_message(WriteBuffer out, Message m) except -1
cpdef bytes encode_message(Message msg)
cdef int write_entry(WriteBuffer out, Inflight e, unsigned long long msg_id) except -1
cpdef bytes encode_entry(Inflight e, unsigned long long msg_id)
cpdef bytes patch_entry(object data, int state, unsigned int packet_id)
cpdef Message decode_message(object data)
cpdef tuple decode_entry(object data, object bodies)
cpdef bytes client_prefix(str client_id)
cpdef bytes seq_key(str client_id, unsigned long long seq)
cpdef bytes pid_key(str client_id, unsigned int packet_id)
cdef bytes u64(unsigned long long v)

cdef class Journal:
    cdef WriteBuffer _buf
    cdef public Py_ssize_t count
    cpdef put(self, int db, bytes key, bytes value)
    cpdef delete(self, int db, bytes key)
    cdef int put_entry(self, int db, str client_id, unsigned long long seq, Inflight e,
                       unsigned long long msg_id) except -1
    cdef int patch_entry(self, int db, str client_id, unsigned long long seq, int state,
                         unsigned int packet_id) except -1
    cdef int delete_entry(self, int db, str client_id, unsigned long long seq) except -1
    cpdef bytes take(self)
